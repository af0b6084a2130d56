"""Peak memory and time of `mgvr verify` and `mgvr verify --repair` on a large index.

Runs them as fresh processes (as a user would) on a copy of an index (its immutable files
hard-linked, the catalog copied), and reads each process's peak RSS from the kernel
(wait4's ru_maxrss), and the peaks of its anonymous (heap: arrays, FAISS, Python objects) and
file-backed (mapped files, libraries) resident memory from /proc/PID/status, sampled every
20 ms (each peak on its own; they need not fall at the same moment). The repairs are given
real work: first one coarse segment file deleted and one sidecar overwritten (rebuilt from
the fine store and from its Parquet part), then an empty catalog (rebuilt from the parts).

    .venv/bin/python bench/bench_verify.py --index /work/mgvr-bench/n1000000-f12-d512-s0-inc20

Build that index first with `bench/bench_search.py --sizes 1000000 --incremental 20
--workdir /work/mgvr-bench` (a settled 1M index, then 20 commits that add and remove clips).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.02


@dataclass
class Measured:
    seconds: float
    peak_rss: int  # bytes, from the kernel (ru_maxrss)
    peak_anon: int  # bytes, sampled RssAnon
    peak_file: int  # bytes, sampled RssFile
    output: str

    def memory(self) -> str:
        return (f"peak RSS {self.peak_rss / 1e6:.0f} MB (anon {self.peak_anon / 1e6:.0f} MB, "
                f"file {self.peak_file / 1e6:.0f} MB)")


def _sample_status(pid: int, peaks: dict[str, int], done: threading.Event) -> None:
    """Keep the largest RssAnon and RssFile of /proc/`pid`/status until `done` or it exits."""
    path = Path(f"/proc/{pid}/status")
    while not done.is_set():
        try:
            lines = path.read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            return
        for line in lines:
            key, _, value = line.partition(":")
            if key in peaks and value.strip():
                peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        done.wait(SAMPLE_SECONDS)


def run_measured(command: list[str]) -> Measured:
    """Wall time, peak memory and stdout of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, stdin=subprocess.DEVNULL)
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()
    sampler = threading.Thread(target=_sample_status, args=(process.pid, peaks, done))
    sampler.start()
    output = process.stdout.read()
    done.set()  # before wait4 reaps the process: /proc/PID may then name another one
    sampler.join()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return Measured(time.perf_counter() - started, usage.ru_maxrss * 1024, peaks["RssAnon"],
                    peaks["RssFile"], output)


def copy_index(source: Path, copy: Path) -> None:
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(source, copy, copy_function=os.link)
    (copy / "catalog.sqlite").unlink()
    shutil.copy2(source / "catalog.sqlite", copy / "catalog.sqlite")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True)
    args = parser.parse_args()
    copy = args.index.with_name(args.index.name + "-verify")
    copy_index(args.index, copy)
    clips = int(subprocess.run([sys.executable, "-m", "mgvr.cli", "status", "--index",
                                str(copy)], capture_output=True, text=True,
                               check=True).stdout.split(" clips,")[0].split()[-1])
    mgvr = [sys.executable, "-m", "mgvr.cli"]
    run = run_measured([*mgvr, "verify", "--index", str(copy)])
    assert "index is consistent" in run.output, run.output
    print(f"verify of {clips:,} clips: {run.seconds:.1f} s, {run.memory()}, "
          f"{run.peak_rss / clips:.0f} B/clip", flush=True)

    segment = max((copy / "coarse").glob("seg-*.faiss"), key=lambda p: p.stat().st_size)
    segment.unlink()
    sidecar = next((copy / "fine").glob("*.rows.npy"))
    sidecar.unlink()  # a hard link: replace it by a damaged copy, leave the source alone
    shutil.copy(args.index / "fine" / sidecar.name, sidecar)
    with open(sidecar, "r+b") as f:
        f.seek(-4096, os.SEEK_END)
        f.write(os.urandom(4096))
    run = run_measured([*mgvr, "verify", "--index", str(copy), "--repair"])
    assert "index is consistent" in run.output, run.output
    print(f"verify --repair (rebuilding {segment.name} and one sidecar): {run.seconds:.1f} s, "
          f"{run.memory()}", flush=True)
    for line in run.output.splitlines():
        if line.startswith("repaired:"):
            print(f"  {line}")

    (copy / "catalog.sqlite").write_bytes(b"")  # the heaviest repair: the catalog from parts
    run = run_measured([*mgvr, "verify", "--index", str(copy), "--repair"])
    assert "index is consistent" in run.output, run.output
    print(f"verify --repair of an empty catalog (rebuilt from the parts): {run.seconds:.1f} s, "
          f"{run.memory()}", flush=True)
    shutil.rmtree(copy)


if __name__ == "__main__":
    main()
