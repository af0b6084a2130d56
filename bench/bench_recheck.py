"""How long a cron run takes on a corpus where nothing changed: the whole `mgvr index` process.

Creates N small files and records them as indexed with C clips each through the real
IndexWriter (so catalog, segments and Parquet are the real formats; features are random and
small, D=64 and 2 frames, because a re-check never reads them), merges the segments into one
as `mgvr compact` would, then times `mgvr index FOLDER --quiet` as a fresh process, as cron
runs it, against `python -c pass` (the interpreter's own start). It also reports how many bytes
the process read (/proc/PID/io rchar) next to the size of the FAISS files: a re-check must
not read them.

    .venv/bin/python bench/bench_recheck.py --files 10000 --clips-per-file 100   # 1M clips
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mgvr.config import IndexConfig, ModelIdentity
from mgvr.indexer.writer import EncodedClip, FileFacts, IndexWriter
from mgvr.storage.catalog import Catalog
from mgvr.storage.layout import IndexLayout
from mgvr.storage.merge import merge_segments

DIM = 64
FRAMES = 2
COMMIT_CLIPS = 20_000


def make_files(folder: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"dir_{i // 1000:03d}" / f"video_{i:06d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(i.to_bytes(8, "little") * 16)
        paths.append(path)
    return paths


def inject(index_dir: Path, paths: list[Path], clips_per_file: int) -> None:
    """Record every file as indexed with `clips_per_file` clips of random features."""
    index_dir.mkdir(parents=True, exist_ok=True)
    layout = IndexLayout(index_dir)
    catalog = Catalog.create(layout.catalog)
    config = IndexConfig(model=ModelIdentity("bench-random", "none", "0" * 64, DIM, 224, 77),
                         frames_per_clip=FRAMES)
    config.save(index_dir)
    writer = IndexWriter(layout, catalog, config)
    rng = np.random.default_rng(0)
    times = np.arange(FRAMES, dtype=np.float32)
    for path in paths:
        features = rng.standard_normal((clips_per_file, FRAMES, DIM)).astype(np.float32)
        features /= np.linalg.norm(features, axis=2, keepdims=True)
        coarse = features.mean(1)
        coarse /= np.linalg.norm(coarse, axis=1, keepdims=True)
        clips = [EncodedClip(i, i * 15.0, (i + 1) * 15.0, times + i * 15, features[i], coarse[i])
                 for i in range(clips_per_file)]
        info = path.stat()
        writer.add(FileFacts(str(path.resolve()), info.st_size, info.st_mtime_ns, None,
                             15.0 * clips_per_file, 320, 240), clips)
        if writer.staged_clips >= COMMIT_CLIPS:
            writer.commit()
    writer.commit()
    merge_segments(layout, catalog, config, budget_s=None, everything=True)
    catalog.close()


def timed_process(command: list[str]) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, bytes read, result) of a fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL)
    read = 0
    while process.poll() is None:  # last io reading before the process goes
        try:
            with open(f"/proc/{process.pid}/io") as f:
                read = max(read, int(next(line for line in f if line.startswith("rchar"))
                                     .split()[1]))
        except (OSError, StopIteration):
            pass
        time.sleep(0.005)
    out, err = process.communicate()
    return (time.perf_counter() - started, read,
            subprocess.CompletedProcess(command, process.returncode, out, err))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--clips-per-file", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep the corpus and index here (reused when present).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        folder, index_dir = work / "videos", work / "index"
        started = time.perf_counter()
        if not (index_dir / "bench-complete").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            paths = make_files(folder, args.files)
            inject(index_dir, paths, args.clips_per_file)
            (index_dir / "bench-complete").write_text("ok\n")
            print(f"setup: {args.files} files, {args.files * args.clips_per_file:,} clips in "
                  f"{time.perf_counter() - started:.1f}s")
        faiss_bytes = sum(p.stat().st_size for p in (index_dir / "coarse").iterdir())
        interpreter = [timed_process([sys.executable, "-c", "pass"])[0]
                       for _ in range(args.repeat)]
        command = [sys.executable, "-m", "mgvr.cli", "index", str(folder), "--index",
                   str(index_dir), "--settle-seconds", "0"]
        runs = []
        for _ in range(args.repeat):
            wall, read, result = timed_process(command)
            assert result.returncode == 0, result.stderr
            assert f"unchanged {args.files}," in result.stdout, result.stdout
            runs.append((wall, read))
        walls = sorted(wall for wall, _ in runs)
        base = min(interpreter)
        print(f"no-op re-check of {args.files:,} files / {args.files * args.clips_per_file:,} "
              f"clips, whole `mgvr index` process: best {walls[0]:.3f}s, median "
              f"{walls[len(walls) // 2]:.3f}s, worst {walls[-1]:.3f}s")
        print(f"  python start alone: {base:.3f}s; so the work after it: best "
              f"{walls[0] - base:.3f}s, median {walls[len(walls) // 2] - base:.3f}s")
        print(f"  bytes read by the process: {max(r for _, r in runs) / 1e6:.1f} MB "
              f"(the coarse/ folder holds {faiss_bytes / 1e6:.1f} MB of FAISS files)")
        print(f"  cpus {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
