"""Peak memory and time of `mgvr verify` and `mgvr verify --repair` on a large index.

Runs them as fresh processes (as a user would) on a copy of an index (its immutable files
hard-linked, the catalog copied), and reads each process's peak RSS from the kernel
(wait4's ru_maxrss). The repairs are given real work: first one coarse segment file deleted
and one sidecar overwritten (rebuilt from the fine store and from its Parquet part), then an
empty catalog (rebuilt from the Parquet parts).

    .venv/bin/python bench/bench_verify.py --index /work/mgvr-bench/n1000000-f12-d512-s0

Build that index first with `bench/bench_search.py --sizes 1000000 --workdir /work/mgvr-bench`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, stdin=subprocess.DEVNULL)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - started, usage.ru_maxrss * 1024, output


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
    seconds, peak, out = run_measured([*mgvr, "verify", "--index", str(copy)])
    assert "index is consistent" in out, out
    print(f"verify of {clips:,} clips: {seconds:.1f} s, peak RSS {peak / 1e6:.0f} MB "
          f"({peak / clips:.0f} B/clip)", flush=True)

    segment = max((copy / "coarse").glob("seg-*.faiss"), key=lambda p: p.stat().st_size)
    segment.unlink()
    sidecar = next((copy / "fine").glob("*.rows.npy"))
    sidecar.unlink()  # a hard link: replace it by a damaged copy, leave the source alone
    shutil.copy(args.index / "fine" / sidecar.name, sidecar)
    with open(sidecar, "r+b") as f:
        f.seek(-4096, os.SEEK_END)
        f.write(os.urandom(4096))
    seconds, peak, out = run_measured([*mgvr, "verify", "--index", str(copy), "--repair"])
    assert "index is consistent" in out, out
    print(f"verify --repair (rebuilding {segment.name} and one sidecar): {seconds:.1f} s, "
          f"peak RSS {peak / 1e6:.0f} MB", flush=True)
    for line in out.splitlines():
        if line.startswith("repaired:"):
            print(f"  {line}")

    (copy / "catalog.sqlite").write_bytes(b"")  # the heaviest repair: the catalog from parts
    seconds, peak, out = run_measured([*mgvr, "verify", "--index", str(copy), "--repair"])
    assert "index is consistent" in out, out
    print(f"verify --repair of an empty catalog (rebuilt from the parts): {seconds:.1f} s, "
          f"peak RSS {peak / 1e6:.0f} MB", flush=True)
    shutil.rmtree(copy)


if __name__ == "__main__":
    main()
