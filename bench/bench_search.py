"""Benchmark of search at scale, on synthetic indexes written through mgvr's real storage code.

For each size (default 10k, 100k and 1M clips) it builds (or reuses, see --workdir) an index of
CLIP-like synthetic features (`bench/synthetic.py`: Parquet parts with their sidecars,
the FAISS generation whose layout the size decides, the SQLite catalog; no video decoding),
opens it with the real Retriever and prints, measured in this run:

1. search latency p50/p95 per stage (recall, fetch, rerank) and their sum, warm, with rerank
   depth 50, for text-like query vectors; text encoding (the index's model) separately;
   the fetch stage again with the index's fine files dropped from the page cache (cold);
2. recall@50 of the coarse index actually used (IVF when large) against exact search;
3. at --exhaustive-at clips: exhaustive fine scoring of every clip (features already in RAM,
   so IO is not counted against it) vs coarse-to-fine, as a speed ratio, and how many of the
   exhaustive top 10 the coarse-to-fine top 10 keeps;
4. bytes per clip on disk (per file kind) and in RAM (anonymous and file-backed RSS growth
   from opening the index and searching it, measured in a fresh process).

The last line printed is one JSON object with every number (also written by --json-out).

    .venv/bin/python bench/bench_search.py                        # 10k, 100k, 1M; D=512, F=12
    .venv/bin/python bench/bench_search.py --sizes 10000,100000 --workdir /tmp/mgvr-bench
    .venv/bin/python bench/bench_search.py --device cuda          # on a GPU machine

The text model defaults to ViT-B-32 with random weights (`--pretrained none`): its text encode
cost is realistic, and D=512. Build time is printed but is not what this script measures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import torch
from common import machine_info, percentiles
from synthetic import SyntheticSpace, topics_for, write_index

from mgvr.config import IndexConfig
from mgvr.model.clip import ClipEncoder, pick_device
from mgvr.model.scoring import rerank_score
from mgvr.retriever.rerank import batch_candidates
from mgvr.retriever.search import Retriever
from mgvr.storage.coarse import recall_at_k
from mgvr.storage.fine import SIDECAR_SUFFIX, MappedSidecar, sidecar_path

COLD_QUERIES = 30
CAPTIONS = ["a man cooking pasta in a small kitchen", "a dog running on the beach",
            "two people dancing at a wedding", "a car driving through the rain at night",
            "children playing football in a park", "a cat sleeping on a sofa",
            "a woman giving a talk on stage", "waves crashing against rocks at sunset"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000",
                   help="comma-separated clip counts (default 10000,100000,1000000)")
    p.add_argument("--frames", type=int, default=12, help="frames per clip (default 12)")
    p.add_argument("--model", default="ViT-B-32", help="text model: open_clip name or .json")
    p.add_argument("--pretrained", default="none", help="weights tag or file (default none)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--queries", type=int, default=200, help="timed queries per size")
    p.add_argument("--rerank-depth", type=int, default=50)
    p.add_argument("--exhaustive-at", type=int, default=100_000,
                   help="size at which to compare with exhaustive fine scoring (0: never)")
    p.add_argument("--exhaustive-queries", type=int, default=3)
    p.add_argument("--workdir", type=Path,
                   help="keep indexes here and reuse them on the next run (default: a "
                        "temporary folder, deleted at the end)")
    p.add_argument("--threads", type=int,
                   help="torch intra-op threads for text encoding and rerank (default: torch's "
                        "choice; the README's figures use 1); FAISS searches on one thread")
    p.add_argument("--incremental", type=int, default=0, metavar="COMMITS",
                   help="after building, make this many incremental commits on a copy of the "
                        "index (each adds --commit-clips clips and removes a share of the "
                        "files, then merges as an index run does) and measure that copy")
    p.add_argument("--commit-clips", type=int, default=100)
    p.add_argument("--delete-share", type=float, default=0.05,
                   help="share of all clips removed over the incremental commits (0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", type=Path, help="also write the JSON result here")
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if min(args.sizes) <= 0 or args.queries <= 0 or args.frames <= 0:
        p.error("--sizes, --queries and --frames must be positive")
    return args


def rss_bytes() -> dict[str, int]:
    """Resident memory split into anonymous (heap: FAISS, caches) and file-backed (mapped
    sidecar pages, libraries)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def disk_usage(root: Path) -> dict[str, int]:
    kinds = {"parquet": 0, "sidecar": 0, "faiss": 0, "catalog": 0, "other": 0}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        size = path.stat().st_size
        if path.name.endswith(".parquet"):
            kinds["parquet"] += size
        elif path.name.endswith(SIDECAR_SUFFIX):
            kinds["sidecar"] += size
        elif path.name.endswith(".faiss"):
            kinds["faiss"] += size
        elif path.name.startswith("catalog.sqlite"):
            kinds["catalog"] += size
        else:
            kinds["other"] += size
    return kinds


def _timed(owner: object, method: str) -> list[float]:
    """Wrap owner.method to record each call's milliseconds in the returned list."""
    seconds: list[float] = []
    inner = getattr(owner, method)

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds.append((time.perf_counter() - started) * 1000)

    setattr(owner, method, timed)
    return seconds


def evict_page_cache(paths: list[Path]) -> None:
    """Drop these files of the index from the page cache (no other file is touched), so the
    next reads of them go to disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def ensure_index(root: Path, encoder: ClipEncoder, clips: int, frames: int, seed: int,
                 space: SyntheticSpace) -> float | None:
    """Build the index unless `root` already holds a complete one; seconds taken, or None."""
    done = root / "bench-complete"
    if done.is_file():
        return None
    if root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    write_index(root, encoder.identity, clips, frames, space, seed=seed)
    done.write_text("ok\n")
    return time.perf_counter() - started


def live_coarse_vectors(retriever: Retriever) -> tuple[np.ndarray, np.ndarray]:
    """Every live clip's exact coarse vector, from the fine store (not from FAISS, whose SQ8
    segments hold approximations): what recall is measured against."""
    by_part: dict[str, list] = {}
    for location in retriever.catalog.clip_locations():
        by_part.setdefault(location.part, []).append(location)
    ids, vectors = [], []
    for part, locations in by_part.items():
        records = MappedSidecar(sidecar_path(retriever.layout.fine_part(part))).records
        ids.append(np.array([loc.clip_id for loc in locations], np.int64))
        vectors.append(np.array(records["coarse"][[loc.row for loc in locations]]))
    return np.concatenate(ids), np.concatenate(vectors)


def exhaustive_vs_two_stage(retriever: Retriever, queries: np.ndarray, depth: int,
                            count: int) -> dict:
    """Score every clip with the fine score, and compare with search. The features are
    resident as scoring tensors (chunks of 8,192 clips) before the clock starts, so only the
    scoring itself is timed: the most favourable case for exhaustive scoring."""
    catalog = retriever.catalog
    clip_ids = catalog.all_clip_ids()
    records = catalog.clips_by_ids(clip_ids)
    chunk = 8192
    chunks = [batch_candidates(retriever.fine.read_batch(
        [(records[i].part, records[i].row) for i in clip_ids[start:start + chunk]]),
        retriever.device) for start in range(0, len(clip_ids), chunk)]
    all_ids = np.concatenate([c.clip_ids for c in chunks])
    seconds, kept = [], []
    for query in queries[:count]:
        text = torch.from_numpy(query)[None].to(retriever.device)
        started = time.perf_counter()
        scores = [rerank_score(text, c.coarse, c.frames, c.frames, c.mask)[0][0]
                  for c in chunks]
        top = torch.cat(scores).topk(10).indices.cpu().numpy()
        if retriever.device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        exhaustive_top = {int(all_ids[i]) for i in top}
        hits = retriever.search_vector(torch.from_numpy(query), 10, depth, True, {})
        kept.append(len(exhaustive_top & {h.clip_id for h in hits}) / 10)
    return {"exhaustive_ms": percentiles([s * 1000 for s in seconds]),
            "top10_overlap_with_exhaustive": round(float(np.mean(kept)), 4)}


def measure(root: Path, clips: int, args: argparse.Namespace, space: SyntheticSpace,
            encoder: ClipEncoder) -> dict:
    rng = np.random.default_rng(args.seed + 1)
    queries = space.queries(20 + args.queries + COLD_QUERIES, rng)
    warm, timed, cold_queries = queries[:20], queries[20:-COLD_QUERIES], queries[-COLD_QUERIES:]
    retriever = Retriever(root, device=args.device)
    retriever._encoder = encoder  # the same model the index names; loaded once for all sizes
    lookups = _timed(retriever.catalog, "clips_by_ids")  # the fetch stage, split in two
    reads = _timed(retriever.fine, "read_batch")
    retriever.encode_query(CAPTIONS[0])
    # As `mgvr serve` starts: whatever the page cache held, prefetch the catalog, then warm up.
    evict_page_cache([p for p in root.iterdir() if p.name.startswith("catalog.sqlite")])
    retriever.prefetch()
    for query in warm:  # loads FAISS, maps sidecars, warms torch
        retriever.search_vector(torch.from_numpy(query), 10, args.rerank_depth, True, {})
    # As in a served search, each query is encoded first (a caption: text encode is timed
    # apart), then searched; the synthetic query vector stands in for its embedding, so that
    # recall and rerank see text-like structure.
    stages: dict[str, list[float]] = {"recall": [], "fetch": [], "rerank": [], "total": []}
    encode = []
    lookups.clear()
    reads.clear()
    for i, query in enumerate(timed):
        started = time.perf_counter()
        retriever.encode_query(CAPTIONS[i % len(CAPTIONS)])
        encode.append((time.perf_counter() - started) * 1000)
        timings: dict[str, float] = {}
        retriever.search_vector(torch.from_numpy(query), 10, args.rerank_depth, True, timings)
        for stage in ("recall", "fetch", "rerank"):
            stages[stage].append(timings[stage])
        stages["total"].append(timings["recall"] + timings["fetch"] + timings["rerank"])

    # Cold: the same, with the sidecars just dropped from the page cache.
    cold = {"fetch": [], "total": []}
    fetch_parts = {"catalog_lookup": percentiles(lookups), "sidecar_read": percentiles(reads)}
    for query in cold_queries:
        evict_page_cache(list((root / "fine").iterdir()))
        timings = {}
        retriever.search_vector(torch.from_numpy(query), 10, args.rerank_depth, True, timings)
        cold["fetch"].append(timings["fetch"])
        cold["total"].append(timings["recall"] + timings["fetch"] + timings["rerank"])

    searcher = retriever._generation().searcher
    k = min(args.rerank_depth, clips)
    ids, vectors = live_coarse_vectors(retriever)
    _, rows = faiss.knn(timed, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = searcher.search(timed, k)
    del vectors
    result = {
        "clips": clips,
        "coarse": {"clips": len(searcher), "segments": searcher.describe()},
        "latency_ms": {stage: percentiles(values) for stage, values in stages.items()},
        "fetch_split_ms": fetch_parts,
        "cold_page_cache_ms": {stage: percentiles(values) for stage, values in cold.items()},
        "text_encode_ms": percentiles(encode),
        f"recall_at_{k}_vs_exact": round(recall_at_k(found, ids[rows]), 4),
        "disk_bytes_per_clip": {kind: round(size / clips, 1)
                                for kind, size in disk_usage(root).items()},
    }
    if clips == args.exhaustive_at:
        compared = exhaustive_vs_two_stage(retriever, timed, args.rerank_depth,
                                           args.exhaustive_queries)
        compared["speedup_vs_coarse_to_fine"] = round(
            compared["exhaustive_ms"]["p50"] / result["latency_ms"]["total"]["p50"], 1)
        result["exhaustive"] = compared
    retriever.close()
    return result


def report(result: dict, build_s: float | None) -> None:
    lat = result["latency_ms"]
    recall_key = next(k for k in result if k.startswith("recall_at_"))
    segments = result["coarse"]["segments"]
    layout = "; ".join(f"{s['kind']} {s['clips']:,}" + (f" nlist={s['nlist']} nprobe={s['nprobe']}"
                                                         if s["nlist"] else "")
                       + f" {s['backend']}" for s in segments)
    print(f"\n== {result['clips']:,} clips ({len(segments)} segments: {layout})"
          + (f", built in {build_s:.0f} s" if build_s else ", reused"))
    for stage in ("recall", "fetch", "rerank", "total"):
        print(f"  {stage:<12} p50 {lat[stage]['p50']:8.2f} ms   p95 {lat[stage]['p95']:8.2f} ms")
    split = result["fetch_split_ms"]
    print(f"  {'':<12} fetch = catalog lookup p50 {split['catalog_lookup']['p50']:.2f} ms + "
          f"sidecar read p50 {split['sidecar_read']['p50']:.2f} ms")
    cold = result["cold_page_cache_ms"]
    print(f"  {'cold fetch':<12} p50 {cold['fetch']['p50']:8.2f} ms   p95 "
          f"{cold['fetch']['p95']:8.2f} ms   (fine files dropped from the page cache; total p50 "
          f"{cold['total']['p50']:.2f} ms)")
    enc = result["text_encode_ms"]
    print(f"  {'text encode':<12} p50 {enc['p50']:8.2f} ms   p95 {enc['p95']:8.2f} ms"
          "   (not in total)")
    print(f"  {recall_key.replace('_', ' ')}: {result[recall_key]}")
    disk = result["disk_bytes_per_clip"]
    print("  disk bytes/clip: " + ", ".join(f"{k} {v:,.0f}" for k, v in disk.items())
          + f" (total {sum(disk.values()):,.0f})")
    if "exhaustive" in result:
        ex = result["exhaustive"]
        print(f"  exhaustive fine scoring p50 {ex['exhaustive_ms']['p50']:.0f} ms: coarse-to-fine "
              f"is {ex['speedup_vs_coarse_to_fine']}x faster; top-10 overlap "
              f"{ex['top10_overlap_with_exhaustive']}")


def incremental_copy(root: Path, args: argparse.Namespace, space: SyntheticSpace) -> dict:
    """A copy of the built index (files hard-linked: they are immutable; the catalog copied)
    that then receives `--incremental` commits as cron runs would make them: each adds
    `--commit-clips` new clips, removes a share of the files (tombstones), commits through the
    IndexWriter and runs the merge policy within the default budget. Returns what the commits
    cost and the copy's path."""
    from mgvr.indexer.options import IndexOptions
    from mgvr.indexer.writer import EncodedClip, FileFacts, IndexWriter
    from mgvr.storage.layout import IndexLayout
    from mgvr.storage.merge import merge_segments

    copy = root.with_name(root.name + f"-inc{args.incremental}")
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(root, copy, copy_function=os.link)
    (copy / "catalog.sqlite").unlink()
    shutil.copy2(root / "catalog.sqlite", copy / "catalog.sqlite")
    layout = IndexLayout(copy)
    catalog = layout.open_catalog()
    config = IndexConfig.load(copy)
    rng = np.random.default_rng(args.seed + 7)
    paths = sorted(catalog.videos_under("/synthetic"))
    total = catalog.counts()["clips"]
    per_commit = int(total * args.delete_share / args.incremental)
    frame_times = (np.arange(args.frames, dtype=np.float32) + 0.5) * 15.0 / args.frames
    from mgvr.storage.commit import Commit

    segment_ms = _timed(Commit, "add_segment")  # the coarse part of each commit
    commit_s, coarse_s, coarse_bytes, fine_bytes, merge_s, removed = [], [], [], [], [], 0
    for number in range(args.incremental):
        writer = IndexWriter(layout, catalog, config)
        features, vectors = space.clips(args.commit_clips, args.frames, rng)
        for start in range(0, args.commit_clips, 10):  # files of 10 clips
            clips = [EncodedClip(i, i * 15.0, (i + 1) * 15.0, frame_times + i * 15.0,
                                 features[start + i], vectors[start + i])
                     for i in range(min(10, args.commit_clips - start))]
            writer.add(FileFacts(f"/synthetic/new-{number:03d}-{start:05d}.mp4", 1, 1, None,
                                 150.0, 640, 360), clips)
        dropped = 0
        while dropped < per_commit and paths:
            path = paths.pop(int(rng.integers(len(paths))))
            dropped += len(catalog.clip_ids_of(path) or [])
            writer.remove(path)
        removed += dropped
        before = set(catalog.files())
        segment_ms.clear()
        started = time.perf_counter()
        writer.commit()
        commit_s.append(time.perf_counter() - started)
        coarse_s.append(sum(segment_ms))
        new = {name: size for name, (size, _) in catalog.files().items() if name not in before}
        coarse_bytes.append(sum(size for name, size in new.items() if name.startswith("coarse/")))
        fine_bytes.append(sum(size for name, size in new.items() if name.startswith("fine/")))
        started = time.perf_counter()
        merge_segments(layout, catalog, config, IndexOptions().merge_budget_s)
        merge_s.append(time.perf_counter() - started)
    segments = catalog.segments()
    catalog.close()
    return {"root": copy, "commits": args.incremental, "clips_per_commit": args.commit_clips,
            "clips_removed": removed, "commit_ms": percentiles([s * 1000 for s in commit_s]),
            "coarse_ms": percentiles(coarse_s),
            "coarse_bytes_max": max(coarse_bytes), "fine_bytes_max": max(fine_bytes),
            "merge_ms": percentiles(
                [s * 1000 for s in merge_s]), "segments_after": len(segments)}


def ram_per_clip(root: Path, clips: int, queries: int, seed: int) -> dict[str, float]:
    """RSS growth from opening the index and searching it, per clip, in a fresh process with
    torch imported but no model loaded and nothing else allocated (freed memory that the
    allocator reuses would hide growth)."""
    dim = IndexConfig.load(root).model.embed_dim
    vectors = SyntheticSpace.make(dim, topics_for(clips), seed=seed).queries(
        queries, np.random.default_rng(seed + 2))
    before = rss_bytes()
    retriever = Retriever(root, device="cpu")
    for query in vectors:
        retriever.search_vector(torch.from_numpy(query), 10, 50, True, {})
    after = rss_bytes()
    return {key: round((after[key] - before[key]) / clips, 1) for key in after}


def one_size(args: argparse.Namespace, clips: int, workdir: Path) -> dict:
    """Build (or reuse) and measure one size. Runs in a fresh process per size, so that its RSS
    growth is its own and not memory an earlier size freed and this one reused."""
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = ClipEncoder.load(args.model, args.pretrained, args.device)
    dim = encoder.embed_dim
    space = SyntheticSpace.make(dim, topics_for(clips), seed=args.seed)
    root = workdir / f"n{clips}-f{args.frames}-d{dim}-s{args.seed}"
    print(f"\nbuilding {clips:,} clips in {root} ({shutil.disk_usage(workdir).free / 1e9:.0f} GB "
          "free) ...", flush=True)
    build_s = ensure_index(root, encoder, clips, args.frames, args.seed, space)
    incremental = None
    if args.incremental:
        incremental = incremental_copy(root, args, space)
        root = incremental.pop("root")
        inc = incremental
        print(f"  {inc['commits']} incremental commits of {args.commit_clips} clips (removing "
              f"{inc['clips_removed']:,} clips in all): whole commit p50 "
              f"{inc['commit_ms']['p50']:.1f} ms (p95 {inc['commit_ms']['p95']:.1f}), its coarse "
              f"part p50 {inc['coarse_ms']['p50']:.1f} ms (p95 {inc['coarse_ms']['p95']:.1f}); "
              f"written at most {inc['coarse_bytes_max'] / 1e6:.3f} MB coarse + "
              f"{inc['fine_bytes_max'] / 1e6:.2f} MB fine; merges p50 "
              f"{inc['merge_ms']['p50']:.1f} ms; {inc['segments_after']} segments after",
              flush=True)
    result = measure(root, clips, args, space, encoder)
    result["incremental"] = incremental
    result["build_s"] = round(build_s, 1) if build_s else None
    result["root"] = str(root)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report(result, build_s)
    return result


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.device = str(device)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mgvr-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"machine: {json.dumps(machine_info(device))}")
    print(f"model {args.model} ({args.pretrained}), F={args.frames}, workdir {workdir}")
    results = []
    try:
        for clips in args.sizes:
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                result = pool.submit(one_size, args, clips, workdir).result()
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                result["ram_bytes_per_clip"] = pool.submit(
                    ram_per_clip, Path(result["root"]), clips, args.queries, args.seed).result()
            print("  RAM bytes/clip after opening the index and searching it (fresh process): "
                  + ", ".join(f"{k} {v:,.0f}" for k, v in result["ram_bytes_per_clip"].items()),
                  flush=True)
            results.append(result)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {"machine": machine_info(device), "frames": args.frames,
               "rerank_depth": args.rerank_depth, "results": results}
    line = json.dumps(summary)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
