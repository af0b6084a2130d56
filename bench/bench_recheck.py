"""How long a cron run takes on a corpus where nothing changed (stat only, no decode, no hash).

Creates N small files, records them as indexed (one clip each, random features injected
through the real IndexWriter, so catalog, FAISS and Parquet are the real formats), then times
`Indexer.run` on the unchanged folder (walk, stat, catalog diff, lock, run record).

    .venv/bin/python bench/bench_recheck.py --files 10000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mgvr.config import IndexConfig, ModelIdentity
from mgvr.indexer import Indexer, IndexOptions
from mgvr.indexer.writer import EncodedClip, FileFacts, IndexWriter
from mgvr.storage.catalog import Catalog
from mgvr.storage.layout import IndexLayout

DIM = 512


def make_files(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"dir_{i // 1000:03d}" / f"video_{i:06d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(8, "little") * 16)
        paths.append(path)
    return paths


def inject(index_dir: Path, paths: list[Path]) -> None:
    """Record every file as indexed with one clip of random features."""
    index_dir.mkdir(parents=True, exist_ok=True)
    identity = ModelIdentity("bench-random", "none", "0" * 64, DIM, 224, 77)
    config = IndexConfig(model=identity)
    config.save(index_dir)
    layout = IndexLayout(index_dir)
    catalog = Catalog.create(layout.catalog)
    writer = IndexWriter(layout, catalog, config)
    rng = np.random.default_rng(0)
    for path in paths:
        features = rng.standard_normal((12, DIM)).astype(np.float32)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        coarse = features.mean(0) / np.linalg.norm(features.mean(0))
        clip = EncodedClip(0, 0.0, 10.0, np.arange(12, dtype=np.float32), features, coarse)
        info = path.stat()
        writer.add(FileFacts(str(path.resolve()), info.st_size, info.st_mtime_ns, None, 10.0, 320,
                             240), [clip])
    writer.commit()
    catalog.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, index_dir = Path(tmp) / "videos", Path(tmp) / "index"
        folder.mkdir()
        started = time.perf_counter()
        paths = make_files(folder, args.files)
        inject(index_dir, paths)
        print(f"setup: {args.files} files recorded in {time.perf_counter() - started:.1f}s")
        indexer = Indexer(index_dir, IndexOptions(settle_seconds=0))
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            summary = indexer.run(folder)
            times.append(time.perf_counter() - started)
            assert summary.unchanged == args.files and summary.indexed == 0, summary
        best, worst = min(times), max(times)
        print(f"unchanged re-check of {args.files} files: best {best:.3f}s, worst {worst:.3f}s "
              f"({best / args.files * 1e6:.0f} us per file), cpus {os.cpu_count()}")


if __name__ == "__main__":
    main()
