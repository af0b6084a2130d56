"""Memory of a long index run: resident set size as the files go by, and the peak.

Generates N short real videos with ffmpeg (or reuses --corpus), indexes them with the real
Indexer, and samples this process's RSS after every file through the progress callback, so a
per-file leak shows as growth between the early and the late samples.

    .venv/bin/python bench/bench_index_memory.py --files 1000
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from common import TINY_MODEL

from mgvr.indexer import Indexer, IndexOptions

SOURCES = ["testsrc2", "smptebars", "mandelbrot", "life", "rgbtestsrc", "testsrc"]
PAGE = resource.getpagesize()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def make_corpus(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        seconds = 1 + i % 3
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"{SOURCES[i % len(SOURCES)]}=size=160x120:rate=10", "-t", str(seconds),
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                        str(folder / f"video_{i:05d}.mp4")], check=True, timeout=60)


class RssSampler:
    """Progress listener that records RSS after each file."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def start(self, files: int) -> None:
        self.samples.append(rss_mb())

    def advance(self, clips: int, failed: bool) -> None:
        self.samples.append(rss_mb())

    def stop(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--corpus", type=Path, help="reuse this folder of videos")
    parser.add_argument("--model", default=str(TINY_MODEL))
    parser.add_argument("--pretrained", default="none")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mgvr-memory-") as work:
        corpus = args.corpus or Path(work) / "corpus"
        if not args.corpus:
            started = time.perf_counter()
            make_corpus(corpus, args.files)
            print(f"generated {args.files} videos in {time.perf_counter() - started:.0f}s")
        sampler = RssSampler()
        options = IndexOptions(model=args.model, pretrained=args.pretrained, settle_seconds=0)
        started = time.perf_counter()
        summary = Indexer(Path(work) / "index", options, sampler).run(corpus)
        seconds = time.perf_counter() - started
    samples = sampler.samples
    files = len(samples) - 1
    marks = sorted({min(files, m) for m in (1, files // 10, files // 4, files // 2, files)})
    print(f"indexed {summary.indexed} files ({summary.clips_added} clips) in {seconds:.1f}s")
    print("RSS after file: " + ", ".join(f"#{m} {samples[m]:.0f} MB" for m in marks))
    tenth = samples[max(1, files // 10)]
    print(f"growth from file #{files // 10} to #{files}: {samples[files] - tenth:+.1f} MB "
          f"({(samples[files] - tenth) / max(1, files - files // 10) * 1e3:+.1f} kB per file)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # ru_maxrss: KiB
    print(f"peak RSS of the indexing process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
