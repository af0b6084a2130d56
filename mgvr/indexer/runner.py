"""The Indexer facade: bring an index up to date with a folder, under the writer lock.

    lock -> remove orphans -> discover/plan -> removal policy -> model (only if there is work)
         -> pipeline (local threads, or Ray) -> commits -> segment merges within a budget

Nothing heavy is imported until there is something to decode: a cron run over an unchanged
folder walks, stats and compares with the catalog, and never loads torch, the model or FAISS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

from mgvr.config import (
    DEFAULT_CLIP_SECONDS,
    DEFAULT_FRAMES,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    INDEX_MODEL_DIR,
    IndexConfig,
)
from mgvr.errors import IncompatibleIndexError, UsageError
from mgvr.indexer import discover
from mgvr.indexer.options import IndexOptions, NoProgress, Progress, RunSummary
from mgvr.storage.catalog import Catalog
from mgvr.storage.layout import IndexLayout
from mgvr.storage.lock import WriterLock
from mgvr.storage.space import disk_full_as_error


def validate_root(root: Path) -> Path:
    if not root.exists():
        raise UsageError(f"{root}: no such folder; pass the folder that holds your videos")
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; pass the folder that holds your videos")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UsageError(f"{root}: permission denied; make it readable by this user")
    return root.resolve()


def check_options(options: IndexOptions) -> None:
    if options.frames_per_clip is not None and options.frames_per_clip <= 0:
        raise UsageError(f"--frames must be a positive number of frames per clip, not "
                         f"{options.frames_per_clip}")
    if options.clip_seconds is not None and options.clip_seconds <= 0:
        raise UsageError(f"--clip-seconds must be positive, not {options.clip_seconds}")
    if options.settle_seconds < 0:
        raise UsageError(f"--settle-seconds must be 0 or more, not {options.settle_seconds}")
    if not 0 <= options.max_remove <= 1:
        raise UsageError(f"--max-remove must be a share from 0 to 100%, not "
                         f"{options.max_remove:.0%}")
    if options.remove_after_s < 0:
        raise UsageError("--remove-after must be 0 or more")
    if options.ray_address:
        from mgvr.distributed.cluster import require_ray

        require_ray()


class Indexer:
    """Brings an index up to date with a folder: new, changed, moved and deleted files."""

    def __init__(self, index_dir: Path, options: IndexOptions | None = None,
                 progress: Progress | None = None) -> None:
        options = options or IndexOptions()
        check_options(options)
        self.layout = IndexLayout(index_dir)
        self.options = options
        self.progress = progress or NoProgress()
        self._encoder = None  # loaded for a new index, reused for its first files
        self._load_seconds = 0.0

    def run(self, root: Path) -> RunSummary:
        root = validate_root(Path(root))
        started = time.monotonic()
        self._encoder, self._load_seconds = None, 0.0
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with WriterLock(self.layout.lock, self.options.wait_s, "index",
                        on_wait=self.progress.waiting), \
                disk_full_as_error(self.layout):
            catalog = self._open_catalog()
            try:
                return self._run(root, catalog, started)
            finally:
                catalog.close()

    def _open_catalog(self) -> Catalog:
        if not self.layout.exists():
            return Catalog.create(self.layout.catalog)
        return self.layout.open_catalog()

    def _run(self, root: Path, catalog: Catalog, started: float) -> RunSummary:
        run_id = catalog.start_run("index", str(root), os.getpid())
        summary = RunSummary(str(root))
        try:
            with disk_full_as_error(self.layout):  # so the run records the one-line reason
                self._run_locked(root, catalog, summary, run_id)
        except BaseException as e:
            message = str(e) or type(e).__name__
            with contextlib.suppress(Exception):  # a full disk may refuse this too
                catalog.finish_run(run_id, "failed", message[:500], **self._counts(summary))
            raise
        summary.seconds = time.monotonic() - started
        catalog.finish_run(run_id, **self._counts(summary))
        return summary

    @staticmethod
    def _counts(summary: RunSummary) -> dict[str, int]:
        return {"indexed": summary.indexed, "unchanged": summary.unchanged,
                "failed": summary.failed, "removed": summary.removed,
                "missing": summary.missing, "moved": summary.moved + summary.restored,
                "deferred": summary.deferred, "clips_added": summary.clips_added}

    def _run_locked(self, root: Path, catalog: Catalog, summary: RunSummary,
                    run_id: int) -> None:
        from mgvr.storage.orphans import remove_orphans

        remove_orphans(self.layout, catalog)
        plan = discover.plan(root, catalog, self.options.retry_failed,
                             self.options.settle_seconds)
        summary.unchanged, summary.skipped_failed = plan.unchanged, plan.skipped_failed
        summary.deferred, summary.moved = len(plan.deferred), len(plan.moved)
        summary.restored = len(plan.restored)
        summary.unreadable_dirs, summary.skipped = plan.unreadable_dirs, plan.skipped
        summary.unreadable_files = plan.unreadable_files
        if not (plan.to_index or plan.vanished or plan.unchanged or plan.skipped_failed
                or plan.moved or plan.deferred or plan.restored or plan.kept_unreadable
                or plan.known):
            raise UsageError(f"{root}: no video files found (by extension such as .mp4 .mkv "
                             ".webm .mov .avi, or by container signature); check the folder")
        config = self._config(catalog)
        if not (plan.to_index or plan.vanished or plan.moved or plan.restored):
            return  # nothing to write: no writer, no FAISS, no model
        from mgvr.indexer.writer import IndexWriter

        writer = IndexWriter(self.layout, catalog, config)
        try:
            self._apply_removals(plan, writer, summary)
            for record, entry in plan.moved + plan.restored:
                writer.move(record.path, entry.path, entry.size, entry.mtime_ns)
            if plan.to_index:
                self._index_files(root, plan.to_index, config, writer, summary, run_id)
            self._commit(writer, summary)
        finally:
            writer.abort()
        summary.clips_added = writer.clips_added
        if summary.commits:
            self._merge(catalog, config, summary)

    # removals: missing first, deleted after a grace period, never en masse ------------------
    def _apply_removals(self, plan: discover.Plan, writer, summary: RunSummary) -> None:
        gone = [r for r in plan.vanished if r.status != "failed"]
        for record in plan.vanished:
            if record.status == "failed":
                writer.remove(record.path)  # nothing of it is indexed: forget at once
        if not gone:
            return
        share = len(gone) / max(plan.known, 1)
        emptied = plan.unchanged + len(plan.to_index) + len(plan.moved) + len(plan.restored) \
            + len(plan.deferred) + plan.skipped_failed == 0
        if share > self.options.max_remove or (emptied and self.options.max_remove < 1):
            why = "the folder holds none of them" if emptied else \
                f"more than --max-remove {self.options.max_remove:.0%}"
            summary.removal_refused = (
                f"{len(gone)} of the {plan.known} indexed files under {_shared_folder(gone)} "
                f"were not found and {why}: nothing was removed (an unmounted disk?); if they "
                "are really gone, run again with --max-remove 100")
            return
        now = time.time()
        newly = [r.path for r in gone if r.status == "indexed"]
        due = [r.path for r in gone if r.status == "missing"
               and now - (r.missing_since or now) >= self.options.remove_after_s]
        if self.options.remove_after_s == 0:
            due, newly = due + newly, []
        writer.mark_missing(newly)
        for path in due:
            writer.remove(path)
        summary.missing, summary.removed = len(newly), len(due)

    # model and config -------------------------------------------------------------------------
    def _config(self, catalog: Catalog) -> IndexConfig:
        opts = self.options
        checkpoint = opts.model_checkpoint and str(Path(opts.model_checkpoint).resolve())
        if self.layout.config.is_file():
            config = IndexConfig.load(self.layout.root)
            config.model.check_request(self.layout.root, opts.model, opts.pretrained)
            asked = {"--frames": (opts.frames_per_clip, config.frames_per_clip),
                     "--clip-seconds": (opts.clip_seconds and float(opts.clip_seconds),
                                        config.clip_seconds),
                     "--model-checkpoint": (checkpoint, config.head_source)}
            for flag, (wanted, have) in asked.items():
                if wanted is not None and wanted != have:
                    raise IncompatibleIndexError(
                        f"{self.layout.root}: this index was built with {flag} {have}, not "
                        f"{wanted}; drop the flag, or use another --index for a new index")
            return config
        if catalog.generation() != 0:
            raise IncompatibleIndexError(f"{self.layout.config}: missing while the catalog has "
                                         "data; run `mgvr verify --repair` to rebuild it")
        return self._new_config(checkpoint)

    def _new_config(self, checkpoint: str | None) -> IndexConfig:
        from mgvr.model.clip import ClipEncoder

        opts = self.options
        head_sha = None
        if checkpoint:
            from mgvr.model.head import checkpoint_clip_args, copy_checkpoint, head_sha256

            if opts.model or opts.pretrained:
                raise UsageError("--model-checkpoint brings its own CLIP; drop --model and "
                                 "--pretrained")
            # A copy left by a first run killed before mgvr.json may be of another checkpoint.
            inside = self.layout.model_dir
            if inside.resolve() != Path(checkpoint):
                shutil.rmtree(inside, ignore_errors=True)
                copy_checkpoint(Path(checkpoint), inside)
            model, pretrained = checkpoint_clip_args(inside)
            head_sha = head_sha256(inside)
        else:
            model = opts.model or DEFAULT_MODEL
            pretrained = opts.pretrained
            if pretrained is None and opts.model is None:
                pretrained = DEFAULT_PRETRAINED
        started = time.perf_counter()
        self._encoder = ClipEncoder.load(model, pretrained, opts.device)
        self._load_seconds = time.perf_counter() - started
        identity = self._encoder.identity
        if checkpoint:  # named inside the index, so a moved or copied index keeps working
            weights = Path(pretrained).relative_to(self.layout.root.resolve())
            identity = replace(identity, pretrained=weights.as_posix())
        config = IndexConfig(model=identity,
                             frames_per_clip=opts.frames_per_clip or DEFAULT_FRAMES,
                             clip_seconds=opts.clip_seconds or DEFAULT_CLIP_SECONDS,
                             head_checkpoint=INDEX_MODEL_DIR if checkpoint else None,
                             head_sha256=head_sha, head_source=checkpoint)
        config.save(self.layout.root)
        return config

    # the pipeline -------------------------------------------------------------------------------
    def _index_files(self, root: Path, entries: list[discover.FileEntry], config: IndexConfig,
                     writer, summary: RunSummary, run_id: int) -> None:
        from mgvr.indexer.assembly import Assembly
        from mgvr.indexer.encode import EncodeStage

        started = time.perf_counter()
        # A Ray run's driver loads the model on its CPU only to check it and to learn its frame
        # recipe; the encode actors load their own copies.
        device = "cpu" if self.options.ray_address else self.options.device
        stage = EncodeStage.for_index(self.layout.root, config, device, self._encoder)
        load_seconds = time.perf_counter() - started + self._load_seconds
        assembly = Assembly(writer, summary, self.progress)

        def after_batch() -> None:
            self._maybe_commit(writer, summary)

        if self.options.ray_address:
            from mgvr.distributed.pipeline import run_ray

            def record_cluster(cluster) -> None:
                writer.catalog.set_run_cluster(run_id, "ray", len(cluster.nodes), cluster.gpus)

            timings = run_ray(entries, root, self.layout.root, config, stage.recipe,
                              self.options, assembly, self.progress, after_batch,
                              record_cluster)
        else:
            from mgvr.indexer.pipeline import run_local

            self.progress.start(len(entries))
            try:
                timings = run_local(entries, stage, config.frames_per_clip,
                                    config.clip_seconds, self.options, assembly, after_batch)
            finally:
                self.progress.stop()
        summary.stage_seconds = {"load_model": load_seconds, **timings}

    def _maybe_commit(self, writer, summary: RunSummary) -> None:
        due = (writer.staged_clips >= self.options.commit_every_clips
               or time.monotonic() - writer.last_commit >= self.options.commit_every_s)
        if due:
            self._commit(writer, summary)

    def _commit(self, writer, summary: RunSummary) -> None:
        if not writer.pending():
            return
        clips = writer.staged_clips
        writer.commit()
        summary.commits += 1
        self.progress.committed(writer.catalog.generation(), clips)

    def _merge(self, catalog: Catalog, config: IndexConfig, summary: RunSummary) -> None:
        from mgvr.storage.merge import merge_segments

        report = merge_segments(self.layout, catalog, config, self.options.merge_budget_s)
        summary.merges = report.merges


def _shared_folder(records: list) -> str:
    """The folder the vanished files share (for the message)."""
    return os.path.dirname(os.path.commonpath([r.path for r in records]) + "/")

