"""The index run: discover -> probe -> decode (threads running ffmpeg) -> encode -> write.

Decoding happens in ffmpeg subprocesses, so threads give real parallelism here; an ordered,
bounded window of in-flight clip groups keeps memory flat however long the corpus is.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from mgvr.config import (
    DEFAULT_CLIP_SECONDS,
    DEFAULT_FRAMES,
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    IndexConfig,
)
from mgvr.errors import DecodeError, IncompatibleIndexError, UsageError
from mgvr.indexer import decode, discover
from mgvr.indexer.writer import EncodedClip, IndexWriter
from mgvr.model.clip import ClipEncoder, load_for_index
from mgvr.model.head import (
    EercfHead,
    checkpoint_clip_args,
    head_frames,
    head_sha256,
    load_head_for_index,
)
from mgvr.storage.catalog import Catalog
from mgvr.storage.coarse import CoarseIndex
from mgvr.storage.layout import IndexLayout
from mgvr.storage.lock import WriterLock
from mgvr.storage.maintenance import remove_orphans

T = TypeVar("T")
R = TypeVar("R")
# Consecutive clips of a file decoded by one ffmpeg process: it saves a seek (decoding from the
# previous keyframe) per clip, while a long film still spreads over all decode workers.
CLIPS_PER_DECODE = 4


@dataclass(frozen=True)
class IndexOptions:
    model: str | None = None  # None: the index's model, or ViT-B-32 for a new index
    pretrained: str | None = None
    model_checkpoint: str | None = None  # a `mgvr train` checkpoint: its CLIP and head
    frames_per_clip: int | None = None
    clip_seconds: float | None = None
    device: str | None = None
    workers: int = max(2, min(16, os.cpu_count() or 2))  # each drives one ffmpeg process
    decode_timeout_s: float = 120.0
    # A commit rewrites the FAISS file, so on a large index commits are spaced out to at least a
    # tenth of its size: a kill loses at most max(commit_every_clips, size / 10) clips or
    # commit_every_s seconds of work.
    commit_every_clips: int = 2000
    commit_every_s: float = 120.0
    retry_failed: bool = False
    wait_s: float = 0.0
    settle_seconds: float = 5.0


@dataclass
class RunSummary:
    root: str
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped_failed: int = 0
    removed: int = 0
    moved: int = 0
    deferred: int = 0
    clips_added: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # path, reason, detail
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        text = (f"indexed {self.indexed} files ({self.clips_added} clips), unchanged "
                f"{self.unchanged}, moved {self.moved}, removed {self.removed}, failed "
                f"{self.failed}")
        if self.skipped_failed:
            text += f" (+{self.skipped_failed} failed earlier, not retried)"
        if self.deferred:
            text += f", {self.deferred} still being written (next run)"
        return text + f" in {self.seconds:.1f}s"


class Progress(Protocol):
    def start(self, files: int) -> None: ...
    def advance(self, clips: int, failed: bool) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, files: int) -> None:
        pass

    def advance(self, clips: int, failed: bool) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass(frozen=True)
class ClipTask:
    entry: discover.FileEntry
    content_key: str | None = None
    info: decode.VideoInfo | None = None
    spans: tuple[decode.ClipSpan, ...] = ()  # before decoding: the group to decode
    clip_count: int = 0
    error: DecodeError | None = None
    decoded: decode.DecodedClip | None = None  # after decoding: one clip


def ordered_futures(pool: Executor, fn: Callable[[T], R], items: Iterable[T],
                    window: int) -> Iterator[Future[R]]:
    """Submit fn(item) for each item, at most `window` in flight; yield the futures in order."""
    in_flight: deque[Future[R]] = deque()
    for item in items:
        in_flight.append(pool.submit(fn, item))
        if len(in_flight) >= window:
            yield in_flight.popleft()
    while in_flight:
        yield in_flight.popleft()


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T],
                window: int) -> Iterator[R]:
    """pool.map that keeps at most `window` items in flight and yields results in order."""
    for future in ordered_futures(pool, fn, items, window):
        yield future.result()


def _probe(entry: discover.FileEntry, timeout_s: float) -> ClipTask:
    key = entry.content_key or discover.content_key(entry.path, entry.size)
    try:
        return ClipTask(entry, key, info=decode.probe(entry.path, timeout_s))
    except DecodeError as e:
        return ClipTask(entry, key, error=e)


def plan_tasks(entries: list[discover.FileEntry], clip_seconds: float, workers: int,
               timeout_s: float) -> Iterator[ClipTask]:
    """Probe files on workers // 2 threads, in order; plan each file's clips and yield one task
    per group of up to CLIPS_PER_DECODE consecutive clips (one failed task for a file that
    could not be probed)."""
    with ThreadPoolExecutor(max(1, workers // 2), thread_name_prefix="probe") as pool:
        probed = ordered_map(pool, lambda entry: _probe(entry, timeout_s), entries,
                             window=workers * 2)
        for task in probed:
            if task.error or task.info is None:
                yield task
                continue
            spans = decode.plan_clips(task.info.duration_s, clip_seconds)
            for group in decode.group_clips(spans, CLIPS_PER_DECODE):
                yield replace(task, spans=tuple(group), clip_count=len(spans))


def decode_group(task: ClipTask, frames: int, recipe: decode.FrameRecipe,
                 timeout_s: float) -> list[ClipTask]:
    """A planned group -> one task per decoded clip, or the group's task with its error."""
    if task.error or not task.spans:
        return [task]
    try:
        clips = decode.decode_clips(task.entry.path, task.info, list(task.spans), frames, recipe,
                                    timeout_s)
    except DecodeError as e:
        return [replace(task, error=e)]
    return [replace(task, decoded=clip) for clip in clips]


def validate_root(root: Path) -> Path:
    if not root.exists():
        raise UsageError(f"{root}: no such folder; pass the folder that holds your videos")
    if not root.is_dir():
        raise UsageError(f"{root}: not a folder; pass the folder that holds your videos")
    if not os.access(root, os.R_OK | os.X_OK):
        raise UsageError(f"{root}: permission denied; make it readable by this user")
    return root.resolve()


def check_counts(frames: int | None, clip_seconds: float | None) -> None:
    if frames is not None and frames <= 0:
        raise UsageError(f"--frames must be a positive number of frames per clip, not {frames}")
    if clip_seconds is not None and clip_seconds <= 0:
        raise UsageError(f"--clip-seconds must be positive, not {clip_seconds}")


class Indexer:
    """Brings an index up to date with a folder: new, changed and deleted files."""

    def __init__(self, index_dir: Path, options: IndexOptions = IndexOptions(),
                 progress: Progress | None = None) -> None:
        check_counts(options.frames_per_clip, options.clip_seconds)
        if options.settle_seconds < 0:
            raise UsageError(f"--settle-seconds must be 0 or more, not {options.settle_seconds}")
        self.layout = IndexLayout(index_dir)
        self.options = options
        self.progress = progress or NoProgress()
        self._encoder: ClipEncoder | None = None
        self._load_seconds = 0.0

    def run(self, root: Path) -> RunSummary:
        root = validate_root(Path(root))
        started = time.monotonic()
        self._load_seconds = 0.0  # this run's model load only (an Indexer can run again)
        self.layout.root.mkdir(parents=True, exist_ok=True)
        with WriterLock(self.layout.lock, self.options.wait_s):
            catalog = Catalog(self.layout.catalog)
            try:
                return self._run_locked(root, catalog, started)
            finally:
                catalog.close()

    def _run_locked(self, root: Path, catalog: Catalog, started: float) -> RunSummary:
        remove_orphans(self.layout, catalog)
        plan = discover.plan(root, catalog, self.options.retry_failed,
                             self.options.settle_seconds)
        summary = RunSummary(str(root), unchanged=plan.unchanged,
                             skipped_failed=plan.skipped_failed, removed=len(plan.removed),
                             moved=len(plan.moved), deferred=len(plan.deferred))
        if not (plan.to_index or plan.removed or plan.unchanged or plan.skipped_failed
                or plan.moved or plan.deferred):
            raise UsageError(f"{root}: no video files found (by extension such as .mp4 .mkv "
                             ".webm .mov .avi, or by container signature); check the folder")
        run_id = catalog.start_run(str(root), os.getpid())
        config = self._config(catalog)
        coarse = self._load_coarse(catalog, config)
        writer = IndexWriter(self.layout, catalog, config, coarse)
        try:
            for record in plan.removed:
                writer.remove(record.path)
            for record, entry in plan.moved:
                writer.move(record.path, entry.path, entry.size, entry.mtime_ns)
            if plan.to_index:
                self._index_files(plan.to_index, config, writer, summary)
            writer.commit()
        finally:
            writer.abort()
        summary.clips_added = writer.clips_added
        summary.seconds = time.monotonic() - started
        catalog.finish_run(run_id, indexed=summary.indexed, unchanged=summary.unchanged,
                           failed=summary.failed, removed=summary.removed, moved=summary.moved,
                           deferred=summary.deferred, clips_added=summary.clips_added)
        return summary

    # model and config -------------------------------------------------------------------------
    def _config(self, catalog: Catalog) -> IndexConfig:
        opts = self.options
        checkpoint = opts.model_checkpoint and str(Path(opts.model_checkpoint).resolve())
        if self.layout.config.is_file():
            config = IndexConfig.load(self.layout.root)
            built = config.model
            asked = {"--model": (opts.model and _model_name(opts.model), built.name),
                     "--pretrained": (opts.pretrained and _weights_name(opts.pretrained),
                                      built.pretrained),
                     "--frames": (opts.frames_per_clip, config.frames_per_clip),
                     "--clip-seconds": (opts.clip_seconds and float(opts.clip_seconds),
                                        config.clip_seconds)}
            asked["--model-checkpoint"] = (checkpoint, config.head_checkpoint)
            for flag, (wanted, have) in asked.items():
                if wanted is not None and wanted != have:
                    raise IncompatibleIndexError(
                        f"{self.layout.root}: this index was built with {flag} {have}, not "
                        f"{wanted}; drop the flag, or use another --index for a new index")
            return config
        if catalog.generation() != 0:
            raise IncompatibleIndexError(f"{self.layout.config}: missing while the catalog has "
                                         "data; run `mgvr verify --repair` or re-index")
        encoder = self._encoder_for_new_index()
        config = IndexConfig(model=encoder.identity,
                             frames_per_clip=opts.frames_per_clip or DEFAULT_FRAMES,
                             clip_seconds=opts.clip_seconds or DEFAULT_CLIP_SECONDS,
                             head_checkpoint=checkpoint,
                             head_sha256=checkpoint and head_sha256(Path(checkpoint)))
        config.save(self.layout.root)
        return config

    def _encoder_for_new_index(self) -> ClipEncoder:
        if self.options.model_checkpoint:
            if self.options.model or self.options.pretrained:
                raise UsageError("--model-checkpoint brings its own CLIP; drop --model and "
                                 "--pretrained")
            model, pretrained = checkpoint_clip_args(Path(self.options.model_checkpoint))
            return self._timed_load(lambda: ClipEncoder.load(model, pretrained,
                                                             self.options.device))
        model = self.options.model or DEFAULT_MODEL
        pretrained = self.options.pretrained
        if pretrained is None and self.options.model is None:
            pretrained = DEFAULT_PRETRAINED
        return self._timed_load(lambda: ClipEncoder.load(model, pretrained, self.options.device))

    def _encoder_for(self, config: IndexConfig) -> ClipEncoder:
        if self._encoder is None:
            return self._timed_load(lambda: load_for_index(config.model, self.options.device))
        return self._encoder

    def _timed_load(self, load: Callable[[], ClipEncoder]) -> ClipEncoder:
        started = time.perf_counter()
        self._encoder = load()
        self._load_seconds = time.perf_counter() - started
        return self._encoder

    def _load_coarse(self, catalog: Catalog, config: IndexConfig) -> CoarseIndex:
        generation = catalog.generation()
        if generation == 0:
            return CoarseIndex.empty(config.model.embed_dim)
        return CoarseIndex.load(self.layout.coarse(generation), config.model.embed_dim)

    # the pipeline -------------------------------------------------------------------------------
    def _index_files(self, entries: list[discover.FileEntry], config: IndexConfig,
                     writer: IndexWriter, summary: RunSummary) -> None:
        encoder = self._encoder_for(config)
        head = (load_head_for_index(config.head_checkpoint, config.head_sha256, encoder.device)
                if config.head_checkpoint else None)
        if head is not None:
            head.frame_weights(config.frames_per_clip)  # W_f must cover the index's frames
        recipe = decode.FrameRecipe(encoder.preprocess.image_size,
                                    encoder.preprocess.interpolation,
                                    encoder.preprocess.resize_mode)
        frames = config.frames_per_clip
        timeout = self.options.decode_timeout_s
        workers = self.options.workers
        timings = {"load_model": self._load_seconds, "decode_wait": 0.0, "encode": 0.0,
                   "write": 0.0}

        def decode_task(task: ClipTask) -> list[ClipTask]:
            return decode_group(task, frames, recipe, timeout)

        tasks = plan_tasks(entries, config.clip_seconds, workers, timeout)
        assembly = _Assembly(writer, summary, self.progress)
        batch: list[ClipTask] = []
        batch_frames = 0
        self.progress.start(len(entries))
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
                filling = True
                for future in ordered_futures(pool, decode_task, tasks, workers * 2):
                    if filling and batch and not future.done():
                        # Start encoding with the first decoded clips rather than wait for a
                        # full batch. Only at the start: later, small batches would cost more
                        # (on the CPU, torch's threads then fight ffmpeg's for the cores).
                        self._encode_batch(encoder, head, batch, assembly, timings)
                        batch, batch_frames, filling = [], 0, False
                    waited = time.perf_counter()
                    group = future.result()
                    timings["decode_wait"] += time.perf_counter() - waited
                    for task in group:
                        if task.error is not None:
                            assembly.fail(task)
                            continue
                        batch.append(task)
                        batch_frames += len(task.decoded.frames)
                        if batch_frames >= encoder.frame_batch_size():
                            self._encode_batch(encoder, head, batch, assembly, timings)
                            batch, batch_frames, filling = [], 0, False
                self._encode_batch(encoder, head, batch, assembly, timings)
        finally:
            self.progress.stop()
        summary.stage_seconds = timings

    def _encode_batch(self, encoder: ClipEncoder, head: EercfHead | None, batch: list[ClipTask],
                      assembly: _Assembly, timings: dict[str, float]) -> None:
        batch = [task for task in batch if not assembly.has_failed(task.entry.path)]
        if not batch:
            return
        started = time.perf_counter()
        features = encoder.encode_frames(np.concatenate([t.decoded.frames for t in batch]))
        features = features.numpy()
        timings["encode"] += time.perf_counter() - started
        started = time.perf_counter()
        offset = 0
        for task in batch:
            count = len(task.decoded.frames)
            clip_features = features[offset:offset + count]
            offset += count
            coarse = _head_outputs(head, clip_features).mean(axis=0)
            coarse /= max(float(np.linalg.norm(coarse)), 1e-12)
            span = task.decoded.span
            assembly.add(task, EncodedClip(span.index, span.start_s, span.end_s,
                                           task.decoded.frame_times, clip_features, coarse))
        self._maybe_commit(assembly.writer)
        timings["write"] += time.perf_counter() - started

    def _maybe_commit(self, writer: IndexWriter) -> None:
        every = max(self.options.commit_every_clips, len(writer.coarse) // 10)
        due = (writer.staged_clips >= every
               or time.monotonic() - writer.last_commit >= self.options.commit_every_s)
        if due:
            writer.commit()


def _head_outputs(head: EercfHead | None, frames: np.ndarray) -> np.ndarray:
    """z of one clip's (n, D) frames: the trained temporal head's output, or the frames."""
    if head is None:
        return frames
    with torch.inference_mode():
        f = torch.from_numpy(frames).to(head.w_g.device).unsqueeze(0)
        z = head_frames(head, f, torch.ones(f.shape[:2], dtype=torch.bool, device=f.device))
    return z[0].float().cpu().numpy()


def _model_name(model: str) -> str:
    """How an index records a --model value (an architecture file is known by its stem)."""
    return Path(model).stem if model.endswith(".json") else model


def _weights_name(pretrained: str) -> str:
    """How an index records a --pretrained value: a tag, 'none', or an absolute file path."""
    if pretrained.lower() in ("none", "random", ""):
        return "none"
    path = Path(pretrained)
    return str(path.resolve()) if path.is_file() else pretrained


class _Assembly:
    """Collects the encoded clips of each file and hands complete files to the writer."""

    def __init__(self, writer: IndexWriter, summary: RunSummary, progress: Progress) -> None:
        self.writer = writer
        self.summary = summary
        self.progress = progress
        self._clips: dict[str, list[EncodedClip]] = {}
        self._failed: set[str] = set()

    def has_failed(self, path: str) -> bool:
        return path in self._failed

    def fail(self, task: ClipTask) -> None:
        path = task.entry.path
        if path in self._failed:
            return
        self._failed.add(path)
        self._clips.pop(path, None)
        error = task.error
        if not discover.still_same(task.entry):
            self._defer()
            return
        self.writer.fail(path, task.entry.size, task.entry.mtime_ns, task.content_key,
                         error.reason, error.detail)
        self.summary.failed += 1
        self.summary.failures.append((path, error.reason, error.detail))
        self.progress.advance(0, failed=True)

    def add(self, task: ClipTask, clip: EncodedClip) -> None:
        path = task.entry.path
        clips = self._clips.setdefault(path, [])
        clips.append(clip)
        if len(clips) == task.clip_count:
            del self._clips[path]
            if not discover.still_same(task.entry):
                self._defer()
                return
            info = task.info
            self.writer.add(path, task.entry.size, task.entry.mtime_ns, task.content_key, clips,
                            info.duration_s, info.width, info.height)
            self.summary.indexed += 1
            self.progress.advance(len(clips), failed=False)

    def _defer(self) -> None:
        """The file changed while it was decoded: leave it (and its old record) for next run."""
        self.summary.deferred += 1
        self.progress.advance(0, failed=False)
