"""`mgvr train`, `mgvr eval` and `mgvr demo`: flags in, a training/evaluation call, text out.

`register(app)` adds the three commands to mgvr's typer app.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from mgvr.cli_common import Device, fail, set_torch_threads
from mgvr.errors import MgvrError, UsageError

# The demo's recipe: a small CLIP trained from scratch, at the head's learning rate, embeddings
# included (ablations behind these numbers: docs/ARCHITECTURE.md, Evaluation).
DEMO_RECIPE = {"train_clips": 400, "test_clips": 400, "epochs": 50}
DEMO_TRAINING = {"frames": 12, "batch_size": 64, "lr": 1e-3, "clip_lr": 1e-3,
                 "weight_decay": 0.2, "warmup": 0.1, "grad_clip": 1.0, "weak_weight": 0.8,
                 "tib_weight": 0.2, "pearson_weight": 0.001, "coarse_mix": 0.5,
                 "frame_weak_mix": 0.5, "head_layers": 4, "freeze_embeddings": False}

CacheDir = Annotated[Path | None, typer.Option(
    help="Where decoded frames are cached. Default: the per-user cache directory.",
    show_default=False)]
Workers = Annotated[int, typer.Option(help="Parallel ffmpeg decoders for the frame cache.")]
Threads = Annotated[int | None, typer.Option(
    help="CPU threads for torch. Default: torch's choice (all cores); 1 is steadier on a "
         "shared machine.", show_default=False)]


def _default_cache(cache_dir: Path | None) -> Path:
    if cache_dir is not None:
        return cache_dir
    import platformdirs

    return Path(platformdirs.user_cache_dir("mgvr")) / "frames"


def _note(message: str) -> None:
    typer.echo(f"mgvr: {message}", err=True)


class _TrainPrinter:
    """A line every `every` steps and at each epoch's end (bars do not survive nohup logs)."""

    def __init__(self, every: int, quiet: bool) -> None:
        self.every = every
        self.quiet = quiet
        self.started = time.monotonic()

    def decode(self, done: int, total: int) -> None:
        if not self.quiet and (done == total or done % 100 == 0):
            _note(f"decoding frames into the cache: {done}/{total}")

    def step(self, report) -> None:
        if self.quiet:
            return
        if report.step_in_epoch % self.every and report.step_in_epoch != report.steps_per_epoch:
            return
        losses = report.losses
        elapsed = time.monotonic() - self.started
        _note(f"epoch {report.epoch + 1}/{report.epochs} step {report.step_in_epoch}/"
              f"{report.steps_per_epoch} loss {losses['loss']:.4f} (weak {losses['weak']:.3f} "
              f"tib {losses['tib']:.3f} pearson {losses['pearson']:.3f}) lr {report.lr:.2e} "
              f"{report.seconds_per_step:.2f} s/step {elapsed / 60:.1f} min")


def _loss_weights(weak: float, tib: float, pearson: float, coarse_mix: float,
                  frame_weak_mix: float):
    from mgvr.model.losses import LossWeights

    for name, value in (("weak-weight", weak), ("tib-weight", tib), ("pearson-weight", pearson),
                        ("coarse-mix", coarse_mix), ("frame-weak-mix", frame_weak_mix)):
        if value < 0:
            raise UsageError(f"--{name} must not be negative, not {value}")
    return LossWeights(weak, tib, pearson, coarse_mix, frame_weak_mix)


def train_command(
    data: Annotated[Path, typer.Argument(
        help="An MSR-VTT folder (trains on MSRVTT_train.9k.csv) or a .csv/.jsonl captions "
             "file with video and caption columns.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Run directory: checkpoint/ and train-log.jsonl.",
                                      show_default=False)],
    model: Annotated[str, typer.Option(
        help="open_clip architecture name or .json file.")] = "ViT-B-32",
    pretrained: Annotated[str, typer.Option(
        help="Pretrained tag, weights file, or 'none' for random init.")] = "openai",
    frames: Annotated[int, typer.Option(help="Frames sampled per video.")] = 12,
    epochs: Annotated[int, typer.Option(help="Passes over the training videos.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Videos per batch.")] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate of the temporal head, W_g, W_f.")]
        = 1e-4,
    clip_lr: Annotated[float, typer.Option(
        help="Learning rate of CLIP (raise it, e.g. 1e-3, to train a small CLIP from scratch).")]
        = 1e-7,
    weight_decay: Annotated[float, typer.Option(help="Decoupled weight decay.")] = 0.2,
    warmup: Annotated[float, typer.Option(help="Share of steps with linear warm-up.")] = 0.1,
    grad_clip: Annotated[float, typer.Option(help="Gradient-norm clip (0: off).")] = 1.0,
    weak_weight: Annotated[float, typer.Option(
        help="Weight of symNCE(coarse_mix S_c + frame_weak_mix S_fw).")] = 0.8,
    tib_weight: Annotated[float, typer.Option(help="Weight of symNCE(S_fs), the TIB term.")]
        = 0.2,
    pearson_weight: Annotated[float, typer.Option(
        help="Weight of the Pearson constraint [P(t, v) + P(t, g)].")] = 0.001,
    coarse_mix: Annotated[float, typer.Option(help="Share of S_c in the weak term.")] = 0.5,
    frame_weak_mix: Annotated[float, typer.Option(help="Share of S_fw in the weak term.")]
        = 0.5,
    head_layers: Annotated[int, typer.Option(help="Transformer layers of the temporal head.")]
        = 4,
    freeze_embeddings: Annotated[bool, typer.Option(
        "--freeze-embeddings/--train-embeddings",
        help="Keep CLIP's patch/token/position embeddings fixed (the reference recipe; train "
             "them for a model from scratch).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batch order, captions.")]
        = 0,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue OUT/checkpoint with the options saved there.")] = False,
    save_every: Annotated[int, typer.Option(
        help="Also checkpoint every N steps (0: at the end of each epoch only).")] = 0,
    log_every: Annotated[int, typer.Option(help="Print the loss every N steps.")] = 20,
    cache_dir: CacheDir = None,
    workers: Workers = 2,
    device: Device = None,
    threads: Threads = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the summary.")]
        = False,
) -> None:
    """Fine-tune CLIP with the temporal head, W_g and W_f on the EERCF loss.

    The loss: symNCE on the coarse + frame-weak scores, symNCE on the TIB score, and the
    Pearson constraint, each with a weight flag (reference values by default).
    """
    from mgvr.training.datasets import load_dataset

    try:
        dataset = load_dataset(data, "train")  # bad paths fail before torch is imported
        from mgvr.training.trainer import TrainOptions, train

        set_torch_threads(threads)
        options = TrainOptions(
            model=model, pretrained=pretrained, frames=frames, epochs=epochs,
            batch_size=batch_size, lr=lr, clip_lr=clip_lr, weight_decay=weight_decay,
            warmup=warmup, grad_clip=grad_clip, head_layers=head_layers,
            freeze_embeddings=freeze_embeddings, seed=seed,
            loss=_loss_weights(weak_weight, tib_weight, pearson_weight, coarse_mix,
                               frame_weak_mix))
        if save_every < 0 or log_every <= 0:
            raise UsageError("--save-every must be >= 0 and --log-every positive")
        options.validate()
        if not quiet:
            _note(f"{len(dataset.videos)} training videos, {len(dataset.captions)} captions "
                  f"from {dataset.source}")
        printer = _TrainPrinter(log_every, quiet)
        result = train(dataset, out, options, _default_cache(cache_dir), resume=resume,
                       device=device, workers=workers, save_every=save_every,
                       on_step=printer.step, on_note=None if quiet else _note,
                       on_decode=printer.decode)
    except MgvrError as e:
        raise fail(e) from None
    last = result.history[-1] if result.history else {}
    typer.echo(f"trained {result.steps} steps over {result.epochs} epochs; "
               f"last epoch loss {last.get('loss', float('nan')):.4f}; checkpoint "
               f"{result.checkpoint}")


def _parse_depths(text: str) -> list[int]:
    try:
        depths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise UsageError(f"--depths takes comma-separated integers, not '{text}'") from e
    if not depths or any(d <= 0 for d in depths):
        raise UsageError(f"--depths takes positive integers, not '{text}'")
    return depths


def eval_command(
    data: Annotated[Path, typer.Argument(
        help="An MSR-VTT folder (evaluates MSRVTT_JSFUSION_test.csv) or a .csv/.jsonl "
             "captions file.", show_default=False)],
    checkpoint: Annotated[Path | None, typer.Option(
        help="A trained checkpoint directory (OUT/checkpoint of mgvr train). Without it, the "
             "zero-shot --model/--pretrained.", show_default=False)] = None,
    index: Annotated[Path | None, typer.Option(
        "--index", help="Search the captions in this index (built by `mgvr index` from the "
                        "captioned videos) with the search users run, its model and its rerank "
                        "mix, instead of encoding the videos here.", show_default=False)] = None,
    model: Annotated[str, typer.Option(help="Zero-shot open_clip model.")] = "ViT-B-32",
    pretrained: Annotated[str, typer.Option(help="Zero-shot weights.")] = "openai",
    frames: Annotated[int | None, typer.Option(
        help="Frames per clip. Default: the checkpoint's, else 12.", show_default=False)]
        = None,
    split: Annotated[str, typer.Option(help="MSR-VTT split: test or train.")] = "test",
    depths: Annotated[str, typer.Option(help="Rerank depths of coarse-to-fine.")] = "10,50,100",
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="With --index: fit the rerank mix (weights, temperatures) on half "
                            "of the captions and report its gain on the other half.")] = False,
    rerank_depth: Annotated[int, typer.Option(
        help="Rerank depth the calibration fits the mix for (as `mgvr search`).")] = 50,
    calibration_share: Annotated[float, typer.Option(
        help="Share of each kind's captions used to fit the mix; the rest is held out.")]
        = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the calibration split.")] = 0,
    write: Annotated[bool, typer.Option(
        "--write", help="With --calibrate: store the chosen mix in the index's mgvr.json; "
                        "search and serve use it from then on.")] = False,
    timing_queries: Annotated[int, typer.Option(help="Queries timed per method.")] = 50,
    timing_clips: Annotated[int, typer.Option(
        help="Also time queries on the gallery replicated to this many clips (0: off).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (schema mgvr.eval/1).")]
        = False,
    cache_dir: CacheDir = None,
    workers: Workers = 2,
    device: Device = None,
    threads: Threads = None,
) -> None:
    """Measure R@K: coarse only vs exhaustive fine vs coarse-to-fine, with time per query.

    Text-to-video R@1/5/10 with 95 % bootstrap intervals, MdR, MnR (and video-to-text where it
    applies), overall and per caption kind when the data tags kinds, and each method's gain
    over coarse with a paired interval.
    """
    from mgvr.training.datasets import load_dataset

    try:
        if timing_queries <= 0 or timing_clips < 0 or (frames is not None and frames <= 0):
            raise UsageError("--timing-queries and --frames must be positive, --timing-clips "
                             ">= 0")
        if (calibrate or write) and index is None:
            raise UsageError("--calibrate and --write need --index: the mix is fitted to, and "
                             "stored in, an index")
        if write and not calibrate:
            raise UsageError("--write stores what --calibrate chose; pass --calibrate too")
        if index is not None and checkpoint is not None:
            raise UsageError("--index brings its own model; drop --checkpoint")
        if rerank_depth <= 0 or not 0 < calibration_share <= 1:
            raise UsageError("--rerank-depth must be positive and --calibration-share in (0, 1]")
        depth_list = _parse_depths(depths)
        dataset = load_dataset(data, split)  # bad paths fail before torch is imported
        # Through an index every query is one small search, too small for thread wake-ups to
        # pay (as for `mgvr serve`): one thread unless asked (measured 1.4 ms a query on one
        # thread, 15 ms on two under a load of 10).
        set_torch_threads(threads if threads is not None or index is None else 1)
        if index is not None:
            report = _evaluate_index(dataset, index, depth_list, device, calibrate,
                                     rerank_depth, calibration_share, seed, write)
        else:
            from mgvr.training.evaluate import run_evaluation

            report = run_evaluation(
                dataset, cache_dir=_default_cache(cache_dir), checkpoint=checkpoint,
                model=model, pretrained=pretrained, frames=frames, depths=depth_list,
                timing_queries=timing_queries, timing_clips=timing_clips, workers=workers,
                device=device, on_note=_note)
    except MgvrError as e:
        raise fail(e) from None
    typer.echo(json.dumps(report, indent=2) if as_json else format_eval(report))


def _evaluate_index(dataset, index: Path, depths: list[int], device: str | None,
                    calibrate: bool, rerank_depth: int, share: float, seed: int,
                    write: bool) -> dict:
    """The report of `mgvr eval --index` (and its calibration block with --calibrate)."""
    from mgvr.retriever import Retriever
    from mgvr.training.calibrate import calibrate as fit
    from mgvr.training.calibrate import write_weights
    from mgvr.training.through_index import index_queries, index_report

    retriever = Retriever(index, device=device)
    try:
        queries = index_queries(retriever, dataset)
        report = index_report(retriever, dataset, queries, depths)
        if calibrate:
            result = fit(retriever, queries, rerank_depth, share, seed)
            report["calibration"] = {**result.as_dict(), "written": None}
    finally:
        retriever.close()
    if write:
        report["calibration"]["written"] = str(write_weights(index, result.chosen))
    return report


def format_eval(report: dict) -> str:
    from mgvr.training.calibrate import format_calibration
    from mgvr.training.evaluate import format_report

    text = format_report(report)
    calibration = report.get("calibration")
    if calibration:
        text += "\n\n" + format_calibration(calibration)
        if calibration["written"]:
            text += f"\nwritten to {calibration['written']} (search and serve use it now)"
    return text


def demo_command(
    directory: Annotated[Path, typer.Argument(help="Where the corpus and the run go.")]
        = Path("mgvr-demo"),
    train_clips: Annotated[int, typer.Option(help="Generated training clips.")]
        = DEMO_RECIPE["train_clips"],
    test_clips: Annotated[int, typer.Option(
        help="Generated test clips; capped (a larger number is refused, naming the cap) so "
             "that each test caption matches exactly one clip.")] = DEMO_RECIPE["test_clips"],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = DEMO_RECIPE["epochs"],
    seed: Annotated[int, typer.Option(help="Seed of the corpus and the training.")] = 0,
    generate_only: Annotated[bool, typer.Option(
        "--generate-only", help="Write the corpus and stop.")] = False,
    serve: Annotated[bool, typer.Option(
        "--serve", help="At the end, serve the demo's index (as `mgvr serve --index "
                        "DIR/index`).")] = False,
    workers: Workers = 2,
    device: Device = None,
    threads: Threads = None,
) -> None:
    """Offline demo: generate a synthetic corpus, train a small model, index the test clips
    with it, compare R@K of coarse vs coarse-to-fine search.

    The corpus is real mp4 files in the MSR-VTT layout with brief-event captions; the model
    is a small CLIP trained from scratch with the EERCF loss; `mgvr index` builds DIR/index of
    the test clips with it, and the table comes from searching that index (`mgvr eval
    --index`), overall and per caption kind, with 95 % intervals.

    Rerun with the same flags, it continues a killed run or reuses the finished one; other
    --train-clips, --test-clips, --epochs or --seed over a trained DIR/run (or a run of an
    earlier recipe) are refused: delete DIR/run or use another folder.
    """
    from mgvr.training.datasets import load_dataset
    from mgvr.training.synthetic import (
        GENERATOR,
        MAX_TEST_CLIPS,
        SYNTHETIC_ARCHITECTURE,
        SYNTHETIC_ARCHITECTURE_NAME,
        generate_corpus,
    )

    corpus, run = directory / "corpus", directory / "run"
    try:
        if not 0 < test_clips <= MAX_TEST_CLIPS:
            raise UsageError(f"--test-clips must be in 1..{MAX_TEST_CLIPS}, not {test_clips}")
        for name, value in (("--train-clips", train_clips), ("--epochs", epochs)):
            if value <= 0:
                raise UsageError(f"{name} must be positive, not {value}")
        # Before the corpus is rendered again for other flags under a trained run. The test
        # clips count too: they are drawn from the seed's generator before the training captions.
        resume = _resume_or_record(directory, {
            "train_clips": train_clips, "test_clips": test_clips, "epochs": epochs,
            "seed": seed, "training": DEMO_TRAINING, "architecture": SYNTHETIC_ARCHITECTURE,
            "corpus": GENERATOR})
        started = time.monotonic()
        summary = generate_corpus(corpus, train_clips, test_clips, seed, workers,
                                  progress=lambda done, total: done % 200 == 0 and _note(
                                      f"rendering videos: {done}/{total}"))
        _note(f"corpus: {summary.train_clips} train + {summary.test_clips} test clips in "
              f"{corpus} ({summary.written} videos written, {time.monotonic() - started:.0f} s)")
        if generate_only:
            return
        architecture = directory / f"{SYNTHETIC_ARCHITECTURE_NAME}.json"
        architecture.write_text(json.dumps(SYNTHETIC_ARCHITECTURE, indent=2))
        train_command(corpus, run, model=str(architecture), pretrained="none", epochs=epochs,
                      seed=seed, resume=resume, save_every=0, log_every=20,
                      cache_dir=directory / "frame-cache", workers=workers, device=device,
                      threads=threads, quiet=False, **DEMO_TRAINING)
        captions = _test_videos(load_dataset(corpus, "test"), directory / "test-videos")
        index = directory / "index"
        _index_test_videos(captions.parent, index, run / "checkpoint", workers, device)
        report = _evaluate_index(load_dataset(captions, "test"), index, [10, 50], device,
                                 False, 50, 0.5, 0, False)
    except MgvrError as e:
        raise fail(e) from None
    typer.echo(format_eval(report))
    typer.echo(f"\nthe demo took {(time.monotonic() - started) / 60:.1f} min. Search its index "
               f"(the test clips, encoded with the trained model):\n"
               f"  mgvr search \"a red circle moves left on a gray background\" --index {index}\n"
               f"  mgvr serve --index {index}\n"
               f"  mgvr eval {captions} --index {index} --calibrate\n"
               f"or run `mgvr demo {directory} --serve` to serve it now.")
    if serve:
        # Become the server (the demo's memory goes with it): the command users would type.
        os.execv(sys.executable, [sys.executable, "-m", "mgvr.cli", "serve", "--index",
                                  str(index)])


def _resume_or_record(directory: Path, settings: dict) -> bool:
    """Whether to resume DIR/run: yes for a run (killed or finished) of these settings; with
    no run yet, the settings are recorded; a run of other settings is refused, never
    continued. A folder the demo did not make is refused if it holds the demo's outputs'
    names, which the demo rewrites."""
    from mgvr.training.checkpoint import checkpoint_path
    from mgvr.training.synthetic import GENERATOR, corpus_info

    recorded, run = directory / "demo-settings.json", directory / "run"
    settings = json.loads(json.dumps(settings))  # as it reads back: lists, not tuples
    made_by_demo = recorded.is_file() or (corpus_info(directory / "corpus") or {}).get(
        "generator") == GENERATOR["generator"]
    taken = [name for name in ("index", "test-videos", "run") if (directory / name).exists()]
    if not made_by_demo and taken:
        raise UsageError(f"{directory} holds {', '.join(taken)} not made by mgvr demo; "
                         "choose another folder")
    if checkpoint_path(run) is None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            recorded.write_text(json.dumps(settings, indent=2, sort_keys=True))
        except OSError as e:
            raise UsageError(f"{directory}: cannot write the demo folder ({e.strerror}); "
                             "choose another folder") from None
        return False
    try:
        before = json.loads(recorded.read_text())
    except (OSError, ValueError):
        before = None
    if before == settings:
        return True
    if isinstance(before, dict):
        changed = sorted(key for key in settings.keys() | before.keys()
                         if before.get(key) != settings.get(key))
        what = f"other demo settings ({', '.join(changed)})"
    else:
        what = f"an earlier mgvr's demo (no readable {recorded.name})"
    raise UsageError(f"{run} was trained with {what}; delete {run} to train anew, or use "
                     "another folder")


def _test_videos(test, folder: Path) -> Path:
    """A folder holding only the test videos (hard links, else copies) and captions.csv of
    their captions and kinds, so `mgvr index` of the folder is the test gallery."""
    import csv
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    captions = folder / "captions.csv"
    # Videos an earlier run's test set put here (its captions.csv names them) and this one's
    # does not hold would stay in the gallery as clips no query asks for.
    current = {video.name for video in test.videos}
    for name in _listed_videos(captions) - current:
        (folder / name).unlink(missing_ok=True)
    for video in test.videos:
        target = folder / video.name
        # A hard link or a copy2 copy has the video's size and mtime; a regenerated video not.
        if not (target.is_file() and _size_and_mtime(target) == _size_and_mtime(video)):
            target.unlink(missing_ok=True)
            try:
                target.hardlink_to(video)
            except OSError:
                shutil.copy2(video, target)
    with captions.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption", "kind"])
        for caption, video, kind in zip(test.captions, test.caption_video, test.caption_kind,
                                        strict=True):
            writer.writerow([test.videos[video].name, caption, kind or ""])
    return captions


def _listed_videos(captions: Path) -> set[str]:
    import csv

    try:
        with captions.open(newline="") as f:
            return {row["video"] for row in csv.DictReader(f)
                    if row.get("video") and Path(row["video"]).name == row["video"]}
    except (OSError, KeyError, csv.Error, UnicodeDecodeError):
        return set()


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _index_test_videos(folder: Path, index: Path, checkpoint: Path, workers: int,
                       device: str | None) -> None:
    """`mgvr index FOLDER --index INDEX --model-checkpoint CHECKPOINT --frames 12`, in process.
    A new training run (its checkpoint newer than the index's copy) builds a new index."""
    import shutil

    from mgvr.config import IndexConfig
    from mgvr.indexer import Indexer, IndexOptions

    if (index / "mgvr.json").is_file():
        head = IndexConfig.load(index).head_source
        copied = index / "model" / "head.safetensors"
        fresh = checkpoint / "head.safetensors"
        # The index records the checkpoint's resolved path; DIR may be relative.
        if head != str(checkpoint.resolve()) or (copied.is_file() and fresh.is_file()
                                       and fresh.stat().st_mtime > copied.stat().st_mtime):
            shutil.rmtree(index)
    started = time.monotonic()
    summary = Indexer(index, IndexOptions(model_checkpoint=str(checkpoint),
                                          frames_per_clip=DEMO_TRAINING["frames"],
                                          device=device, workers=max(1, workers),
                                          settle_seconds=0)).run(folder)
    _note(f"index: {summary.line()} ({time.monotonic() - started:.0f} s)")
    if summary.failures:
        raise UsageError(f"{folder}: {len(summary.failures)} test videos could not be indexed "
                         f"(first: {summary.failures[0][0]}); delete {folder.parent} and rerun")


def register(app: typer.Typer) -> None:
    """Add `train`, `eval` and `demo` to mgvr's command line."""
    app.command("train")(train_command)
    app.command("eval")(eval_command)
    app.command("demo")(demo_command)

