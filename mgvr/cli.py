"""Command line: a thin mapping from flags to the Indexer and Retriever facades.

Exit codes: 0 ok; 1 failed (nothing changed); 2 bad usage or input; 3 index run finished but
some files or folders could not be indexed (see `mgvr status`); 4 another run holds the lock;
5 index run finished but refused to remove files (too many gone, or an empty folder);
6 out of disk space (the last commit is intact).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from mgvr.cli_common import Device, IndexPath, fail, set_torch_threads, shown
from mgvr.errors import EXIT_PARTIAL, EXIT_REMOVAL_REFUSED, MgvrError, UsageError
from mgvr.retriever.filters import DATE_HELP, SearchFilter
from mgvr.retriever.results import SEARCH_SCHEMA, search_document
from mgvr.serve.client import ServedSearch

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Search your video collections by text. `mgvr index FOLDER` builds or updates an index; "
         "`mgvr search \"QUERY\"` finds clips. Exit codes: 0 ok, 1 failed, 2 bad usage or input, "
         "3 some files could not be indexed, 4 index locked by another run, 5 removals "
         "refused (too many files gone), 6 out of disk space.")


class _BarProgress:
    """Progress bar on a terminal: files done, files/s and clips/s."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[rates]}"), TimeElapsedColumn(),
                             transient=True)
        self._task = None
        self._clips = 0
        self._files = 0
        self._failed = 0
        self._started = time.monotonic()

    def start(self, files: int) -> None:
        self._started = time.monotonic()
        self._bar.start()
        self._task = self._bar.add_task("index", total=files, rates="")

    def advance(self, clips: int, failed: bool) -> None:
        self._files += 1
        self._clips += clips
        self._failed += failed
        seconds = max(time.monotonic() - self._started, 1e-6)
        rates = (f"{self._files / seconds:.1f} files/s  {self._clips / seconds:.1f} clips/s"
                 + (f"  {self._failed} failed" if self._failed else ""))
        self._bar.update(self._task, advance=1, rates=rates)

    def waiting(self, message: str) -> None:
        typer.echo(f"mgvr: {message}", err=True)

    def committed(self, generation: int, clips: int) -> None:
        pass

    def stop(self) -> None:
        self._bar.stop()


class _LineProgress:
    """Without a terminal (a log file, cron without --quiet): one line per commit."""

    def waiting(self, message: str) -> None:
        typer.echo(f"mgvr: {message}", err=True)

    def start(self, files: int) -> None:
        typer.echo(f"mgvr: indexing {files} files", err=True)

    def advance(self, clips: int, failed: bool) -> None:
        pass

    def committed(self, generation: int, clips: int) -> None:
        typer.echo(f"mgvr: committed generation {generation} ({clips} clips)", err=True)

    def stop(self) -> None:
        pass


def _duration(text: str) -> float:
    """'3600', '90m', '12h', '7d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return float(number) * units[unit]
    except ValueError:
        raise _fail_usage(f"--remove-after must be a duration such as 3600, 90m, 12h or 7d, "
                          f"not {text!r}") from None


def _share(text: str) -> float:
    """'50', '50%' -> 0.5."""
    try:
        return float(text.rstrip("%")) / 100
    except ValueError:
        raise _fail_usage(f"--max-remove must be a percentage such as 50 or 100, not {text!r}"
                          ) from None


@app.command()
def index(
    folder: Annotated[Path, typer.Argument(help="Folder of videos, searched recursively.",
                                           show_default=False)],
    index_dir: IndexPath = None,
    model: Annotated[str | None, typer.Option(
        help="open_clip architecture (e.g. ViT-B-32, ViT-L-14), an architecture .json file, or "
             "local-dir:PATH. Default for a new index: ViT-B-32; an existing index keeps its own.",
        show_default=False)] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Pretrained tag (e.g. openai, laion2b_s34b_b79k), a local weights file, or 'none' "
             "for random weights. Default: openai for ViT-B-32.", show_default=False)] = None,
    model_checkpoint: Annotated[Path | None, typer.Option(
        help="A `mgvr train` checkpoint directory: its fine-tuned CLIP, temporal head, W_g and "
             "W_f are copied into the index and build it (new index only; search then uses "
             "them too).", show_default=False)] = None,
    frames: Annotated[int | None, typer.Option(
        help="Frames sampled uniformly per clip (new index only). Default: 12.",
        show_default=False)] = None,
    clip_seconds: Annotated[float | None, typer.Option(
        help="Videos longer than this are cut into consecutive equal clips of at most this "
             "length (new index only). Default: 15.", show_default=False)] = None,
    device: Device = None,
    workers: Annotated[int | None, typer.Option(
        help="Parallel ffmpeg decoders. Default: CPU count, 2 to 16.", show_default=False)] = None,
    decode_timeout: Annotated[float, typer.Option(
        help="Seconds probing a file, or decoding each of its clips, may take before the file "
             "is marked failed (clips decoded in one ffmpeg pass share their budget).")]
        = 120.0,
    retry_failed: Annotated[bool, typer.Option(
        help="Retry files that failed before even if they did not change.")] = False,
    wait: Annotated[float, typer.Option(
        help="Seconds to wait for another index run on the same index (else exit 4 at once).")]
        = 0.0,
    settle_seconds: Annotated[float, typer.Option(
        envvar="MGVR_SETTLE_SECONDS",
        help="Files modified less than this many seconds ago are probably still being copied: "
             "they are left for the next run.")] = 5.0,
    commit_every: Annotated[int, typer.Option(
        help="Commit after this many clips (or 120 s), so a killed run loses little work.")]
        = 2000,
    max_remove: Annotated[str, typer.Option(
        help="Refuse to remove anything when more than this percentage of the folder's "
             "indexed files is gone, or the folder is empty (an unmounted disk): exit 5.")]
        = "50",
    remove_after: Annotated[str, typer.Option(
        help="Files that vanished stay in the index, marked missing, for this long before "
             "they are removed (seconds, or 90m, 12h, 7d); 0 removes them at once. A file "
             "that comes back meanwhile is kept without re-encoding.")] = "7d",
    merge_budget: Annotated[float, typer.Option(
        help="Seconds the run may spend merging coarse segments at its end (the rest waits "
             "for a later run or `mgvr compact`).")] = 60.0,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress or summary; only failures are printed (for cron).")]
        = False,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="auto|ADDRESS",
        help="Probe, decode and encode on a Ray cluster (needs mgvr\\[ray]); this machine still "
             "plans and commits. auto: the cluster at $RAY_ADDRESS, else one running on this "
             "machine, else a new local one; or a cluster's address (HOST:PORT).",
        show_default=False)] = None,
) -> None:
    """Index every video under FOLDER (new, changed, moved and deleted files are handled).

    Unchanged files are skipped without decoding, so it is cheap to run from cron.
    """
    from mgvr.indexer import Indexer, IndexOptions
    from mgvr.storage.layout import default_index_dir

    options = IndexOptions(model=model, pretrained=pretrained,
                           model_checkpoint=model_checkpoint and str(model_checkpoint),
                           frames_per_clip=frames,
                           clip_seconds=clip_seconds, device=device,
                           decode_timeout_s=decode_timeout, retry_failed=retry_failed,
                           wait_s=wait, settle_seconds=settle_seconds,
                           commit_every_clips=max(1, commit_every),
                           max_remove=_share(max_remove), remove_after_s=_duration(remove_after),
                           merge_budget_s=merge_budget, ray_address=ray)
    if workers is not None:
        if workers <= 0:
            raise _fail_usage(f"--workers must be positive, not {workers}")
        options = IndexOptions(**{**asdict(options), "workers": workers})
    progress = None
    if not quiet:
        progress = _BarProgress() if sys.stderr.isatty() else _LineProgress()
    try:
        summary = Indexer(default_index_dir(index_dir), options, progress).run(folder)
    except MgvrError as e:
        raise fail(e) from None
    for path, reason, detail in summary.failures:
        typer.echo(f"mgvr: failed: {shown(path)}: {reason}: {detail}", err=True)
    for folder_path in summary.unreadable_dirs:
        typer.echo(f"mgvr: unreadable folder (its indexed files are kept): {shown(folder_path)}",
                   err=True)
    for path, why in summary.unreadable_files:
        typer.echo(f"mgvr: unreadable file (kept if indexed): {shown(path)}: {why}", err=True)
    if not quiet:
        for path, why in summary.skipped:
            typer.echo(f"mgvr: skipped: {shown(path)}: {why}", err=True)
    if summary.removal_refused:
        typer.echo(f"mgvr: refused to remove files: {summary.removal_refused}", err=True)
    if not quiet:
        typer.echo(summary.line())
    if summary.removal_refused:
        raise typer.Exit(EXIT_REMOVAL_REFUSED)
    if summary.incomplete:
        raise typer.Exit(EXIT_PARTIAL)


def _run_outcome(run: dict) -> str:
    if run["status"] == "failed":
        return f"failed: {run['error']}"
    if run["finished_at"] is None:
        return f"did not finish (pid {run['pid']}: still running, or killed)"
    took = f"{run['finished_at'] - run['started_at']:.1f}s"
    if run["command"] != "index":
        return f"{took}"
    how = "" if run["mode"] == "local" else f" on {run['mode']}: {run['workers']} nodes, " \
                                             f"{run['gpus']} GPUs"
    return (f"{took}{how}: indexed {run['indexed']} ({run['clips_added']} clips), unchanged "
            f"{run['unchanged']}, moved {run['moved']}, missing {run['missing']}, removed "
            f"{run['removed']}, failed {run['failed']}, deferred {run['deferred']}")


@app.command()
def status(
    index_dir: IndexPath = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    runs: Annotated[int, typer.Option(help="How many recent runs to list.")] = 5,
) -> None:
    """What is indexed: files and clips, failed and missing files, recent runs, segments,
    size on disk. Needs only read access to the index."""
    from mgvr.storage.maintenance import status as index_status

    try:
        layout = _existing_layout(index_dir)
        catalog = layout.open_catalog()
        try:
            report = index_status(layout, catalog, runs)
        finally:
            catalog.close()
    except MgvrError as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"index {shown(report['index'])}: {report['model']}, {report['frames_per_clip']} "
               f"frames per clip, clips of at most {report['clip_seconds']:g}s")
    typer.echo(f"{report['files_indexed']} files, {report['clips']} clips, "
               f"{report['files_failed']} failed, {report['files_missing']} missing, "
               f"{report['disk_bytes'] / 1e6:.1f} MB on disk, generation {report['generation']}")
    segments = report["segments"]
    kinds = ", ".join(f"{s['name']} {s['kind']} {s['rows']} ({s['dead']} removed)"
                      for s in segments[:8])
    typer.echo(f"coarse: {len(segments)} segments: {kinds}" + (" ..." if len(segments) > 8
                                                                else ""))
    for failure in report["failed"]:
        typer.echo(f"failed: {shown(failure['path'])}: {failure['reason']}: {failure['detail']}")
    for missing in report["missing"]:
        since = time.strftime("%Y-%m-%d %H:%M", time.localtime(missing["since"]))
        typer.echo(f"missing since {since}: {shown(missing['path'])}")
    for run in report["runs"]:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started_at"]))
        where = f" {shown(run['root'])}" if run["root"] else ""
        typer.echo(f"run {started} {run['command']}{where}: {_run_outcome(run)}")


@app.command()
def verify(
    index_dir: IndexPath = None,
    repair: Annotated[bool, typer.Option(
        help="Fix what verified data allows: rebuild a lost catalog or sidecar from the Parquet "
             "parts, rebuild coarse segments from the fine store, hide removed clips, drop "
             "clips whose features are lost (listed for re-indexing), delete orphans.")]
        = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running index job.")] = 0.0,
) -> None:
    """Check catalog, checksums, FAISS segments and Parquet parts against each other (exit 1
    when problems remain). Without --repair it needs only read access."""
    from mgvr.storage.lock import WriterLock
    from mgvr.storage.space import disk_full_as_error
    from mgvr.storage.verify import verify_directory

    try:
        layout = _existing_layout(index_dir, damaged_ok=True)
        lock = WriterLock(layout.lock, wait, "verify --repair", shared=not repair)
        with lock, disk_full_as_error(layout):
            report = verify_directory(layout, repair=repair)
            after = verify_directory(layout) if report.repaired else report
    except MgvrError as e:
        raise fail(e) from None
    for problem in report.problems:
        typer.echo(f"problem: {problem}")
    for orphan in report.orphans:
        typer.echo(f"orphan: {orphan} (left by a killed run; the next run removes it)")
    for name in report.foreign:
        typer.echo(f"unknown: {name} (not in the catalog; kept: `mgvr verify --repair` "
                   "adopts it only when it rebuilds a lost catalog)")
    for fix in report.repaired:
        typer.echo(f"repaired: {fix}")
    for path in report.reindex:
        typer.echo(f"re-index: {shown(path)}")
    if after.clean:
        typer.echo("index is consistent")
        return
    if report.repaired:
        for problem in after.problems:
            typer.echo(f"still wrong: {problem}")
    typer.echo("mgvr: run `mgvr verify --repair`" if not repair else
               "mgvr: some problems need a fresh index: move it away and run `mgvr index` again",
               err=True)
    raise typer.Exit(1)


@app.command()
def compact(
    index_dir: IndexPath = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running index job.")] = 0.0,
) -> None:
    """Rewrite Parquet parts to drop the frame features of removed or changed files, and merge
    all coarse segments into one (dropping removed clips' vectors)."""
    from mgvr.config import IndexConfig
    from mgvr.storage.lock import WriterLock
    from mgvr.storage.maintenance import compact as compact_index
    from mgvr.storage.space import disk_full_as_error

    try:
        layout = _existing_layout(index_dir)
        with WriterLock(layout.lock, wait, "compact"), disk_full_as_error(layout):
            catalog = layout.open_catalog()
            run_id = catalog.start_run("compact", None, os.getpid())
            try:
                result = compact_index(layout, catalog, IndexConfig.load(layout.root))
            except BaseException as e:
                with contextlib.suppress(Exception):
                    catalog.finish_run(run_id, "failed", str(e)[:500])
                raise
            catalog.finish_run(run_id)
            catalog.close()
    except MgvrError as e:
        raise fail(e) from None
    merged = result.merge
    typer.echo(f"rewrote {result.parts_rewritten} parts, dropped {result.rows_dropped} dead rows; "
               f"merged {merged.segments_before} segments into {merged.segments_after} "
               f"({merged.tombstones_dropped} removed vectors dropped); "
               f"{result.bytes_before / 1e6:.1f} MB -> {result.bytes_after / 1e6:.1f} MB (the "
               "files replaced go once no reader can need them: at a commit 60 s or more later)")


def _existing_layout(index_dir: Path | None, damaged_ok: bool = False):
    from mgvr.storage.layout import IndexLayout, default_index_dir

    layout = IndexLayout(default_index_dir(index_dir))
    if damaged_ok and layout.exists():
        return layout
    return layout.require()


def _fail_usage(message: str) -> typer.Exit:
    from mgvr.errors import UsageError

    return fail(UsageError(message))


@app.command()
def search(
    query: Annotated[str | None, typer.Argument(
        help="What to look for, in words (or give --image instead).", show_default=False)]
        = None,
    index_dir: IndexPath = None,
    image: Annotated[Path | None, typer.Option(
        help="Search by example: clips that look like this picture (JPEG, PNG, WebP, ...).",
        show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Hits to print.")] = 10,
    rerank_depth: Annotated[int, typer.Option(
        help="Candidates recalled by the coarse index and re-scored with frame features.")] = 50,
    no_rerank: Annotated[bool, typer.Option(
        "--no-rerank", help="Coarse order only (skip the fine rerank).")] = False,
    under: Annotated[Path | None, typer.Option(
        help="Only videos in this folder (or below it).", show_default=False)] = None,
    name: Annotated[str | None, typer.Option(
        help="Only videos whose file name contains this text (case-insensitive).",
        show_default=False)] = None,
    modified_after: Annotated[str | None, typer.Option(
        help=f"Only videos modified at or after this moment: {DATE_HELP}.",
        show_default=False)] = None,
    modified_before: Annotated[str | None, typer.Option(
        help=f"Only videos modified before this moment: {DATE_HELP}.", show_default=False)]
        = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help=f"Print JSON (schema {SEARCH_SCHEMA}, see README).")] = False,
    device: Device = None,
    model: Annotated[str | None, typer.Option(
        help="Refuse to search unless the index was built with this model.",
        show_default=False)] = None,
    pretrained: Annotated[str | None, typer.Option(
        help="Refuse to search unless the index was built with these weights.",
        show_default=False)] = None,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for torch when searching in this process (no server). Default: "
             "torch's choice.", show_default=False)] = None,
) -> None:
    """Find the clips that best match QUERY (or look like --image): coarse recall, then fine
    rerank. Filters keep recall: the best matching clips among those allowed are found."""
    from mgvr.serve.client import search_via_server
    from mgvr.storage.layout import default_index_dir

    try:
        if (query is None) == (image is None):
            raise UsageError("give either QUERY or --image PATH (one of them)")
        if limit <= 0:
            raise UsageError(f"--limit must be positive, not {limit}")
        if rerank_depth <= 0:
            raise UsageError(f"--rerank-depth must be positive, not {rerank_depth}")
        search_filter = SearchFilter.parse(under, name, modified_after, modified_before)
        picture = _read_query_image(image) if image is not None else None
        # A running `mgvr serve` for this index answers in milliseconds; else search here.
        request = ServedSearch(query, picture and (image.name, picture), limit, rerank_depth,
                               not no_rerank, search_filter, model, pretrained)
        served = search_via_server(default_index_dir(index_dir), request, device=device)
        if served is not None:
            result, context_length = served
        else:
            result, context_length = _search_here(default_index_dir(index_dir), request,
                                                  image, device, threads)
    except MgvrError as e:
        raise fail(e) from None
    if result.query_truncated:
        typer.echo(f"mgvr: note: query longer than the model's {context_length} tokens; "
                   "the rest was ignored", err=True)
    if as_json:
        typer.echo(json.dumps(search_document(result, not no_rerank, rerank_depth), indent=2))
        return
    if not result.hits:
        typer.echo("no clip matches the filter" if search_filter else
                   "no clips indexed yet; run `mgvr index FOLDER` first")
        return
    for hit in result.hits:
        typer.echo(f"{hit.rank:>3}  {hit.score:7.4f}  {_clock(hit.start_s)}-{_clock(hit.end_s)}"
                   f"  best {_clock(hit.best_moment_s)}  {shown(hit.path)}")


def _read_query_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a folder; pass an image file") from None
    except OSError as e:
        raise UsageError(f"{path}: cannot read the image ({e.strerror})") from None


def _search_here(index_dir: Path, request: ServedSearch, image: Path | None,
                 device: str | None, threads: int | None):
    """The search in this process: (result, the model's context length)."""
    from mgvr.retriever import Retriever

    set_torch_threads(threads)
    retriever = Retriever(index_dir, device=device, model=request.model,
                          pretrained=request.pretrained)
    counts = (request.limit, request.rerank_depth, request.rerank, request.search_filter)
    if image is not None:
        result = retriever.search_image(image, *counts)
    else:
        result = retriever.search(request.query, *counts)
    return result, retriever.config.model.context_length


def _clock(seconds: float) -> str:
    minutes, secs = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:04.1f}" if hours else f"{minutes}:{secs:04.1f}"


from mgvr.serve.commands import register as register_serve  # noqa: E402

register_serve(app)


from mgvr.training.commands import register as _register_training  # noqa: E402

_register_training(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
