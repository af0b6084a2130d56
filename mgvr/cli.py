"""Command line: a thin mapping from flags to the Indexer and Retriever facades.

Exit codes: 0 ok; 1 failed (nothing changed); 2 bad usage or input; 3 index run finished but
some files could not be indexed (see `mgvr status`); 4 another index run holds the lock.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from mgvr.cli_common import Device, IndexPath, fail, set_torch_threads
from mgvr.errors import EXIT_PARTIAL, MgvrError, UsageError
from mgvr.retriever.filters import DATE_HELP, SearchFilter
from mgvr.retriever.results import SEARCH_SCHEMA, search_document
from mgvr.serve.client import ServedSearch

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Search your video collections by text. `mgvr index FOLDER` builds or updates an index; "
         "`mgvr search \"QUERY\"` finds clips. Exit codes: 0 ok, 1 failed, 2 bad usage or input, "
         "3 some files could not be indexed, 4 index locked by another run.")


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

    def stop(self) -> None:
        self._bar.stop()


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
             "W_f build the index (new index only; search then uses them too).",
        show_default=False)] = None,
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
        help="Commit after this many clips (or 120 s), so a killed run loses little work. On "
             "a large index at least a tenth of its size, since each commit rewrites FAISS.")]
        = 2000,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress or summary; only failures are printed (for cron).")]
        = False,
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
                           commit_every_clips=max(1, commit_every))
    if workers is not None:
        if workers <= 0:
            raise _fail_usage(f"--workers must be positive, not {workers}")
        options = IndexOptions(**{**asdict(options), "workers": workers})
    progress = _BarProgress() if not quiet and sys.stderr.isatty() else None
    try:
        summary = Indexer(default_index_dir(index_dir), options, progress).run(folder)
    except MgvrError as e:
        raise fail(e) from None
    for path, reason, detail in summary.failures:
        typer.echo(f"mgvr: failed: {path}: {reason}: {detail}", err=True)
    if not quiet:
        typer.echo(summary.line())
    if summary.failed:
        raise typer.Exit(EXIT_PARTIAL)


@app.command()
def status(
    index_dir: IndexPath = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    runs: Annotated[int, typer.Option(help="How many recent runs to list.")] = 5,
) -> None:
    """What is indexed: files and clips, failed files with reasons, recent runs, size on disk."""
    from mgvr.storage.catalog import Catalog
    from mgvr.storage.maintenance import status as index_status

    try:
        layout = _existing_layout(index_dir)
        catalog = Catalog(layout.catalog, readonly=True)
        report = index_status(layout, catalog, runs)
    except MgvrError as e:
        raise fail(e) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"index {report['index']}: {report['model']}, {report['frames_per_clip']} frames "
               f"per clip, clips of at most {report['clip_seconds']:g}s")
    typer.echo(f"{report['files_indexed']} files, {report['clips']} clips, "
               f"{report['files_failed']} failed, {report['disk_bytes'] / 1e6:.1f} MB on disk, "
               f"generation {report['generation']}")
    for failure in report["failed"]:
        typer.echo(f"failed: {failure['path']}: {failure['reason']}: {failure['detail']}")
    for run in report["runs"]:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["started_at"]))
        if run["finished_at"] is None:
            outcome = f"did not finish (pid {run['pid']}: still running, or killed)"
        else:
            outcome = (f"{run['finished_at'] - run['started_at']:.1f}s: indexed {run['indexed']} "
                       f"({run['clips_added']} clips), unchanged {run['unchanged']}, moved "
                       f"{run['moved']}, removed {run['removed']}, failed {run['failed']}, "
                       f"deferred {run['deferred']}")
        typer.echo(f"run {started} {run['root']}: {outcome}")


@app.command()
def verify(
    index_dir: IndexPath = None,
    repair: Annotated[bool, typer.Option(
        help="Fix what the data present allows (rebuild the coarse index from the fine store, "
             "drop clips whose features are lost, delete orphans) and list what to re-index.")]
        = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running index job.")] = 0.0,
) -> None:
    """Check catalog, FAISS and Parquet against each other (exit 1 when problems remain)."""
    from mgvr.storage.catalog import Catalog
    from mgvr.storage.lock import WriterLock
    from mgvr.storage.maintenance import verify as verify_index

    try:
        layout = _existing_layout(index_dir)
        with WriterLock(layout.lock, wait):
            catalog = Catalog(layout.catalog)
            report = verify_index(layout, catalog, repair=repair)
            after = verify_index(layout, catalog) if report.repaired else report
    except MgvrError as e:
        raise fail(e) from None
    for problem in report.problems:
        typer.echo(f"problem: {problem}")
    for orphan in report.orphans:
        typer.echo(f"orphan: {orphan} (left by a killed run; the next run removes it)")
    for fix in report.repaired:
        typer.echo(f"repaired: {fix}")
    for path in report.reindex:
        typer.echo(f"re-index: {path}")
    if after.clean:
        typer.echo("index is consistent")
        return
    if report.repaired:
        for problem in after.problems:
            typer.echo(f"still wrong: {problem}")
    typer.echo("run `mgvr verify --repair`" if not repair else
               "some problems need a fresh index: move it away and run `mgvr index` again",
               err=True)
    raise typer.Exit(1)


@app.command()
def compact(
    index_dir: IndexPath = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running index job.")] = 0.0,
) -> None:
    """Rewrite Parquet parts to drop the frame features of removed or changed files."""
    from mgvr.config import IndexConfig
    from mgvr.storage.catalog import Catalog
    from mgvr.storage.lock import WriterLock
    from mgvr.storage.maintenance import compact as compact_index

    try:
        layout = _existing_layout(index_dir)
        with WriterLock(layout.lock, wait):
            result = compact_index(layout, Catalog(layout.catalog),
                                   IndexConfig.load(layout.root))
    except MgvrError as e:
        raise fail(e) from None
    typer.echo(f"rewrote {result.parts_rewritten} parts, dropped {result.rows_dropped} dead rows; "
               f"{result.bytes_before / 1e6:.1f} MB -> {result.bytes_after / 1e6:.1f} MB")


def _existing_layout(index_dir: Path | None):
    from mgvr.storage.layout import IndexLayout, default_index_dir

    return IndexLayout(default_index_dir(index_dir)).require()


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
                   f"  best {_clock(hit.best_moment_s)}  {hit.path}")


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
    from mgvr.retriever.recall import search_on_one_thread

    set_torch_threads(threads)
    search_on_one_thread()
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
