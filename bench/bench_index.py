"""Benchmark of an mgvr index run and of search latency, on a generated corpus of real videos.

What it measures, in one run:

1. corpus: N real video files made by ffmpeg from lavfi sources (testsrc2, mandelbrot,
   smptebars, cellauto, life), 320x240 to 1280x720, mostly H.264 MP4 plus some VP9 WebM and
   MPEG-4 MKV (or an existing folder with --corpus).
2. decode-only: the indexer's own plan_jobs (hash, probe, plan and group clips) and
   decode_job, on thread pools of the indexer's sizes, with no encoding.
3. encode-only: ClipEncoder.encode_frames on as many frames as the decode pass produced (the
   decoded frames, or random ones with --random-frames), batched as the indexer batches them.
4. full index: the real mgvr Indexer into a fresh index folder; the ratios full / max(decode,
   encode) and full / (decode + encode) show how well the pipeline overlaps the two stages.
5. search: a Retriever on that index; p50/p95 of each SearchResult.timings_ms stage and of
   the whole call, with the TIB rerank (depth 50) and coarse-only.
6. with --ray: the same index run with `--ray` on a Ray cluster (by default a local one of
   this machine's CPUs, started and stopped here), its wall time over the local run's, and
   the Ray decode stage alone (probe + decode tasks, no encoding): decoded clips/s per CPU.

The last line printed is one JSON object with every number (also written by --json-out).

Run it from the repository root:

    .venv/bin/python bench/bench_index.py --files 24
    .venv/bin/python bench/bench_index.py --model ViT-B-32 --pretrained none --files 8
    .venv/bin/python bench/bench_index.py --files 96 --ray        # --ray vs local, one machine
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import TINY_MODEL, machine_info, percentiles

from mgvr.config import DEFAULT_CLIP_SECONDS, DEFAULT_FRAMES
from mgvr.indexer import Indexer, IndexOptions, decode, discover
from mgvr.indexer.stages import FileFailure, decode_job, ordered_futures, plan_jobs
from mgvr.model.clip import ClipEncoder
from mgvr.retriever import Retriever

SIZES = [(320, 240), (480, 360), (640, 360), (640, 480), (854, 480), (960, 540), (1280, 720)]
# lavfi source templates; {w} {h} {r} are filled in per file.
SOURCES = {
    "testsrc2": "testsrc2=size={w}x{h}:rate={r}",
    "mandelbrot": "mandelbrot=size={w}x{h}:rate={r}",
    "smptebars": "smptebars=size={w}x{h}:rate={r},hue=h=t*30",
    "cellauto": "cellauto=size={w}x{h}:rate={r}:rule=110",
    "life": "life=size={w}x{h}:rate={r}:mold=10:ratio=0.1:life_color=#00ff88",
}
# container -> ffmpeg codec arguments
CODECS = {
    ".mp4": ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"],
    ".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1",
              "-b:v", "1M", "-pix_fmt", "yuv420p"],
    ".mkv": ["-c:v", "mpeg4", "-q:v", "5", "-pix_fmt", "yuv420p"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=24, help="videos to generate (default 24)")
    p.add_argument("--seconds-min", type=float, default=8.0, help="shortest video (s)")
    p.add_argument("--seconds-max", type=float, default=40.0, help="longest video (s)")
    p.add_argument("--fps", type=int, default=25, help="frame rate of generated videos")
    p.add_argument("--corpus", type=Path,
                   help="folder of videos to reuse; generated there first if it has none")
    p.add_argument("--seed", type=int, default=0, help="seed for sizes, lengths and queries")
    p.add_argument("--model", default=str(TINY_MODEL),
                   help="open_clip name or architecture .json (default: the tiny test model)")
    p.add_argument("--pretrained", default="none", help="weights tag/file, or none (random)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--workers", type=int, default=IndexOptions().workers,
                   help="decode threads (default: the indexer's default)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames per clip")
    p.add_argument("--clip-seconds", type=float, default=DEFAULT_CLIP_SECONDS)
    p.add_argument("--random-frames", action="store_true",
                   help="encode random frames instead of keeping the decoded ones in memory")
    p.add_argument("--queries", type=int, default=50, help="timed search queries (default 50)")
    p.add_argument("--rerank-depth", type=int, default=50)
    p.add_argument("--json-out", type=Path, help="also write the JSON result here")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="also index with --ray: on the cluster at ADDRESS, or (no ADDRESS) on "
                        "a local cluster of this machine's CPUs started for the benchmark")
    args = p.parse_args(argv)
    if args.files <= 0 or args.queries <= 0 or args.workers <= 0:
        p.error("--files, --queries and --workers must be positive")
    if not 0 < args.seconds_min <= args.seconds_max:
        p.error("need 0 < --seconds-min <= --seconds-max")
    return args


def ffmpeg_version() -> str:
    out = subprocess.run([decode.tool("ffmpeg"), "-version"], capture_output=True, text=True,
                         check=False).stdout
    return out.split("\n", 1)[0].removeprefix("ffmpeg version ").split(" ", 1)[0]


# corpus ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoSpec:
    path: Path
    source: str
    width: int
    height: int
    seconds: float
    fps: int

    def command(self) -> list[str]:
        # mandelbrot renders slowly; a lower frame rate keeps generation time reasonable.
        rate = min(self.fps, 10) if self.source == "mandelbrot" else self.fps
        lavfi = SOURCES[self.source].format(w=self.width, h=self.height, r=rate)
        return [decode.tool("ffmpeg"), "-hide_banner", "-nostdin", "-v", "error", "-y",
                "-f", "lavfi", "-i", lavfi, "-t", f"{self.seconds:.2f}",
                *CODECS[self.path.suffix], str(self.path)]


def plan_corpus(folder: Path, args: argparse.Namespace) -> list[VideoSpec]:
    rng = random.Random(args.seed)
    sources = list(SOURCES)
    specs = []
    for i in range(args.files):
        ext = ".webm" if i % 8 == 5 else ".mkv" if i % 8 == 7 else ".mp4"
        width, height = rng.choice(SIZES)
        seconds = round(rng.uniform(args.seconds_min, args.seconds_max), 1)
        source = sources[i % len(sources)]
        specs.append(VideoSpec(folder / f"v{i:03d}_{source}_{width}x{height}{ext}", source,
                               width, height, seconds, args.fps))
    return specs


def make_corpus(folder: Path, args: argparse.Namespace) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    specs = plan_corpus(folder, args)
    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda s: subprocess.run(s.command(), capture_output=True,
                                                         text=True, check=False), specs))
    for spec, result in zip(specs, results, strict=True):
        if result.returncode != 0:
            raise SystemExit(f"ffmpeg failed on {spec.path.name}: {result.stderr.strip()[-300:]}")
    return {"generated": len(specs), "generate_s": time.perf_counter() - started}


def corpus_entries(folder: Path) -> list[discover.FileEntry]:
    """The files a first index run of `folder` would pick (same walk and candidate test)."""
    unreadable: list[str] = []
    return [e for e in discover.walk(folder.resolve(), unreadable)
            if discover.is_candidate(e.path)]


def describe_corpus(entries: list[discover.FileEntry]) -> dict:
    by_ext: dict[str, int] = {}
    for entry in entries:
        ext = Path(entry.path).suffix.lower()
        by_ext[ext] = by_ext.get(ext, 0) + 1
    return {"files": len(entries), "bytes": sum(e.size for e in entries), "by_ext": by_ext}


# decode-only ----------------------------------------------------------------------------------

def bench_decode(entries: list[discover.FileEntry], encoder: ClipEncoder,
                 args: argparse.Namespace, timeout: float) -> tuple[dict, list[np.ndarray]]:
    """Decode every clip with the indexer's thread layout; returns numbers and the frames."""
    recipe = decode.FrameRecipe(encoder.preprocess.image_size, encoder.preprocess.interpolation,
                                encoder.preprocess.resize_mode)
    workers = args.workers

    def decode_task(job):
        return job if isinstance(job, FileFailure) else decode_job(job, args.frames, recipe,
                                                                   timeout)

    kept: list[np.ndarray] = []
    clips = frames = failures = 0
    started = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        jobs = plan_jobs(entries, args.clip_seconds, workers, timeout)
        for future in ordered_futures(pool, decode_task, jobs, window=workers * 2):
            result = future.result()
            if isinstance(result, FileFailure):  # a file or group that failed counts as one
                failures += 1
                continue
            for item in result:
                clips += 1
                frames += len(item.clip.frames)
                kept.append(np.empty((len(item.clip.frames), 0), np.uint8)
                            if args.random_frames else item.clip.frames)
    seconds = time.perf_counter() - started
    return ({"seconds": seconds, "clips": clips, "frames": frames, "failures": failures,
             "clips_per_s": clips / seconds, "workers": workers,
             "image_size": recipe.image_size}, kept)


# encode-only ----------------------------------------------------------------------------------

def batches(clips: list[np.ndarray], batch_frames: int) -> Iterator[list[np.ndarray]]:
    """Group clips as the indexer does: a batch closes once it holds >= batch_frames frames."""
    batch: list[np.ndarray] = []
    count = 0
    for clip in clips:
        batch.append(clip)
        count += len(clip)
        if count >= batch_frames:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def bench_encode(encoder: ClipEncoder, clips: list[np.ndarray], random_frames: bool) -> dict:
    size = encoder.preprocess.image_size
    if random_frames:
        rng = np.random.default_rng(0)
        clips = [rng.integers(0, 256, (len(c), size, size, 3), np.uint8) for c in clips]
    encoder.encode_frames(np.zeros((2, size, size, 3), np.uint8))  # warm-up, not timed
    frames = 0
    started = time.perf_counter()
    for batch in batches(clips, encoder.frame_batch_size()):
        features = encoder.encode_frames(np.concatenate(batch)).numpy()
        frames += len(features)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames": frames, "frames_per_s": frames / seconds,
            "batch_frames": encoder.frame_batch_size(),
            "input": "random" if random_frames else "decoded"}


# full index -----------------------------------------------------------------------------------

def bench_index(corpus: Path, index_dir: Path, args: argparse.Namespace,
                decode_s: float, encode_s: float) -> dict:
    options = IndexOptions(model=args.model, pretrained=args.pretrained,
                           frames_per_clip=args.frames, clip_seconds=args.clip_seconds,
                           device=args.device, workers=args.workers,
                           settle_seconds=0)  # the corpus was just written, and is complete
    started = time.perf_counter()
    summary = Indexer(index_dir, options).run(corpus)
    seconds = time.perf_counter() - started
    load = summary.stage_seconds.get("load_model", 0.0)
    slower = max(decode_s, encode_s)
    return {"seconds": seconds, "summary_seconds": summary.seconds,
            "indexed": summary.indexed, "failed": summary.failed,
            "clips": summary.clips_added, "clips_per_s": summary.clips_added / seconds,
            "ratio_full_over_max": seconds / slower,
            "ratio_full_over_sum": seconds / (decode_s + encode_s),
            # The model load is a fixed cost per run, outside both stage-only timings.
            "ratio_full_without_load_over_max": (seconds - load) / slower,
            # When decode and encode both saturate the same CPU cores, the full run cannot
            # beat their sum: this is the lowest full / max reachable on such a machine.
            "shared_cpu_floor": (decode_s + encode_s) / slower,
            "stage_seconds": dict(summary.stage_seconds),
            "failures": [f"{Path(p).name}: {r} {d}" for p, r, d in summary.failures]}


# --ray ----------------------------------------------------------------------------------------

def bench_ray(corpus: Path, work: Path, args: argparse.Namespace, encoder: ClipEncoder,
              local: dict, encode_only: dict) -> dict:
    """The index run with --ray, and the Ray decode stage alone, on one cluster."""
    from ray.cluster_utils import Cluster

    from mgvr.distributed.cluster import connect, disconnect
    from mgvr.distributed.pipeline import decode_dataset, quiet_data_context
    from mgvr.distributed.records import unpack
    from mgvr.indexer.stages import DecodedClipOf

    cluster = cluster_start_s = None
    address = args.ray
    if address == "local":
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="mgvr-ray-", dir="/tmp")
        started = time.perf_counter()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": os.cpu_count(), "include_dashboard": False})
        address = cluster.address
        cluster_start_s = time.perf_counter() - started
    try:
        options = IndexOptions(model=args.model, pretrained=args.pretrained,
                               frames_per_clip=args.frames, clip_seconds=args.clip_seconds,
                               device=args.device, settle_seconds=0, ray_address=address)
        started = time.perf_counter()
        summary = Indexer(work / "index-ray", options).run(corpus)
        seconds = time.perf_counter() - started

        info = connect(address)
        try:
            quiet_data_context()
            recipe = decode.FrameRecipe(encoder.preprocess.image_size,
                                        encoder.preprocess.interpolation,
                                        encoder.preprocess.resize_mode)
            started = time.perf_counter()
            ds = decode_dataset(corpus_entries(corpus), args.clip_seconds, args.frames, recipe,
                                IndexOptions().decode_timeout_s)
            clips = sum(isinstance(unpack(row), DecodedClipOf) for row in ds.iter_rows())
            decode_s = time.perf_counter() - started
        finally:
            disconnect()
    finally:
        if cluster is not None:
            cluster.shutdown()
    stages = dict(summary.stage_seconds)
    clips_per_s_encode = encode_only["frames_per_s"] / args.frames
    return {"address": "local cluster" if cluster else address,
            "cluster_start_s": cluster_start_s,
            "nodes": len(info.nodes), "cpus": info.cpus, "gpus": info.gpus,
            "seconds": seconds, "clips": summary.clips_added, "indexed": summary.indexed,
            "failed": summary.failed, "ratio_over_local": seconds / local["seconds"],
            "ratio_over_local_without_connect":
                (seconds - stages.get("connect", 0.0)) / local["seconds"],
            "stage_seconds": stages,
            "decode_only": {"seconds": decode_s, "clips": clips,
                            "clips_per_s_per_cpu": clips / decode_s / info.cpus},
            # The driver's share: assembling files and committing them (Parquet, FAISS,
            # SQLite), the one part that does not grow with the cluster.
            "driver_write_clips_per_s": summary.clips_added / max(stages["write"], 1e-9),
            "encode_clips_per_s_per_device": clips_per_s_encode,
            "encode_device": str(encoder.device)}


# search ---------------------------------------------------------------------------------------

SUBJECTS = ["a red car", "a dog", "colour bars", "a fractal", "a man", "green cells",
            "a spinning wheel", "a city street", "a crowd", "waves", "a test pattern", "a cat"]
ACTIONS = ["moving fast", "at night", "zooming in", "on a screen", "in slow motion",
           "from above", "changing colour", "close up"]


def make_queries(count: int, seed: int) -> list[str]:
    texts = [f"{s} {a}" for s, a in itertools.product(SUBJECTS, ACTIONS)]
    random.Random(seed).shuffle(texts)
    while len(texts) < count:  # more than the product: number the repeats to keep them distinct
        texts += [f"{t} {len(texts) + i}" for i, t in enumerate(texts[:count - len(texts)])]
    return texts[:count]


def time_queries(retriever: Retriever, queries: list[str], depth: int, rerank: bool) -> dict:
    stages: dict[str, list[float]] = {}
    for text in queries:
        started = time.perf_counter()
        result = retriever.search(text, rerank_depth=depth, rerank=rerank)
        total = (time.perf_counter() - started) * 1000
        for stage, ms in result.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
        stages.setdefault("total", []).append(total)
    return {stage: percentiles(values) for stage, values in stages.items()}


def bench_search(index_dir: Path, args: argparse.Namespace) -> dict:
    queries = make_queries(args.queries + 3, args.seed)
    warmup, timed = queries[:3], queries[3:]
    retriever = Retriever(index_dir, device=args.device)
    try:
        for text in warmup:
            retriever.search(text, rerank_depth=args.rerank_depth)
        return {"queries": len(timed), "rerank_depth": args.rerank_depth,
                "rerank": time_queries(retriever, timed, args.rerank_depth, True),
                "coarse_only": time_queries(retriever, timed, args.rerank_depth, False)}
    finally:
        retriever.close()


# report ---------------------------------------------------------------------------------------

def print_search(label: str, stages: dict) -> None:
    cells = "  ".join(f"{name} {v['p50']:.2f}/{v['p95']:.2f}" for name, v in stages.items())
    print(f"  {label:<12} p50/p95 ms: {cells}")


def report(r: dict) -> None:
    m, c, d, e, f, s = (r[k] for k in ("machine", "corpus", "decode", "encode", "index",
                                       "search"))
    print(f"machine: {m['cpu_count']} CPUs ({m['cpus_usable']} usable), torch {m['torch']} "
          f"({m['torch_threads']} threads), device {m['device']}"
          + (f" ({m['gpu']})" if "gpu" in m else "")
          + f", ffmpeg {m['ffmpeg']}, python {m['python']}")
    print(f"model: {r['model']} (pretrained {r['pretrained']}), {r['frames']} frames/clip, "
          f"{r['clip_seconds']:g} s clips, load {r['model_load_s']:.2f} s")
    print(f"corpus: {c['files']} files, {c['bytes'] / 1e6:.1f} MB {c['by_ext']}"
          + (f", generated in {c['generate_s']:.1f} s" if "generate_s" in c else ""))
    print(f"decode-only: {d['seconds']:.2f} s, {d['clips']} clips ({d['frames']} frames, "
          f"{d['failures']} failed), {d['clips_per_s']:.2f} clips/s, {d['workers']} workers")
    print(f"encode-only: {e['seconds']:.2f} s, {e['frames']} frames ({e['input']}), "
          f"{e['frames_per_s']:.1f} frames/s, batches of >= {e['batch_frames']}")
    print(f"full index: {f['seconds']:.2f} s (summary {f['summary_seconds']:.2f} s), "
          f"{f['clips']} clips, {f['clips_per_s']:.2f} clips/s, {f['indexed']} indexed, "
          f"{f['failed']} failed")
    print(f"  full / max(decode, encode) = {f['ratio_full_over_max']:.2f}   "
          f"full / (decode + encode) = {f['ratio_full_over_sum']:.2f}")
    print(f"  without the model load ({f['stage_seconds'].get('load_model', 0):.2f} s): "
          f"(full - load) / max(decode, encode) = {f['ratio_full_without_load_over_max']:.2f}")
    if r["machine"]["device"] == "cpu":
        print(f"  encoding on the CPU shares the cores with ffmpeg: the floor for full / max "
              f"here is (decode + encode) / max = {f['shared_cpu_floor']:.2f}")
    print("  stage_seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in f["stage_seconds"].items()))
    for failure in f["failures"]:
        print(f"  failed: {failure}")
    print(f"search: {s['queries']} queries, rerank depth {s['rerank_depth']}")
    print_search("rerank", s["rerank"])
    print_search("coarse-only", s["coarse_only"])
    if "ray" in r:
        report_ray(r["ray"], f)


def report_ray(ray: dict, local: dict) -> None:
    started = (f", started in {ray['cluster_start_s']:.1f} s" if ray["cluster_start_s"]
               else "")
    print(f"--ray on {ray['address']} ({ray['nodes']} nodes, {ray['cpus']:g} CPUs, "
          f"{ray['gpus']} GPUs{started}): {ray['seconds']:.2f} s, {ray['clips']} clips, "
          f"{ray['indexed']} indexed, {ray['failed']} failed")
    print(f"  --ray / local = {ray['seconds']:.2f} / {local['seconds']:.2f} = "
          f"{ray['ratio_over_local']:.2f}   (without joining the cluster and checking its "
          f"nodes, {ray['stage_seconds'].get('connect', 0):.2f} s: "
          f"{ray['ratio_over_local_without_connect']:.2f})")
    print("  stage_seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in ray["stage_seconds"].items()))
    d = ray["decode_only"]
    print(f"  Ray decode stage alone: {d['clips']} clips in {d['seconds']:.2f} s = "
          f"{d['clips_per_s_per_cpu']:.2f} clips/s per CPU")
    print(f"  encode: {ray['encode_clips_per_s_per_device']:.1f} clips/s on one "
          f"{ray['encode_device']} device; driver write: {ray['driver_write_clips_per_s']:.0f} "
          "clips/s")


def run(args: argparse.Namespace, work: Path) -> dict:
    corpus = args.corpus or work / "corpus"
    entries = corpus_entries(corpus) if corpus.is_dir() else []
    generated = {} if entries else make_corpus(corpus, args)
    entries = entries or corpus_entries(corpus)
    timeout = IndexOptions().decode_timeout_s

    started = time.perf_counter()
    encoder = ClipEncoder.load(args.model, args.pretrained, args.device)
    model_load_s = time.perf_counter() - started

    decoded, clips = bench_decode(entries, encoder, args, timeout)
    encoded = bench_encode(encoder, clips, args.random_frames)
    del clips
    index_dir = work / "index"
    indexed = bench_index(corpus, index_dir, args, decoded["seconds"], encoded["seconds"])
    searched = bench_search(index_dir, args)
    machine = {**machine_info(encoder.device), "ffmpeg": ffmpeg_version()}
    result = {"machine": machine, "model": encoder.identity.name,
              "pretrained": encoder.identity.pretrained, "model_load_s": model_load_s,
              "frames": args.frames, "clip_seconds": args.clip_seconds,
              "corpus": {**describe_corpus(entries), **generated},
              "decode": decoded, "encode": encoded, "index": indexed, "search": searched}
    if args.ray:
        result["ray"] = bench_ray(corpus, work, args, encoder, indexed, encoded)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mgvr-bench-") as work:
        result = run(args, Path(work))
    report(result)
    line = json.dumps(result, sort_keys=True)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
