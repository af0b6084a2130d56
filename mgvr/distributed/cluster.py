"""Joining a Ray cluster for one index run, and checking at its start that every node can do
its share: see the video folder and the index at the same paths, and run ffmpeg and ffprobe."""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from mgvr.errors import DecoderMissingError, UsageError

INSTALL_HINT = 'install it with `pip install "mgvr[ray]"` (Ray Data 2.60)'
NODE_CHECK_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ClusterInfo:
    nodes: list[tuple[str, str]]  # (node id, IP address) of each alive node
    cpus: float
    gpus: int


def require_ray() -> None:
    """Refuse --ray at once when Ray is not installed (without importing it: seconds)."""
    if importlib.util.find_spec("ray") is None:
        raise UsageError(f"--ray needs Ray Data, which is not installed; {INSTALL_HINT}")


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401  (the extra brings both)
    except ImportError as e:
        raise UsageError(f"--ray needs Ray Data, which is not installed; {INSTALL_HINT}") from e
    return ray


def connect(address: str) -> ClusterInfo:
    """Join the cluster at `address`; "auto": $RAY_ADDRESS, else a cluster running on this
    machine, else a new local one (stopped again by `disconnect`)."""
    ray = import_ray()
    _check_reachable(os.environ.get("RAY_ADDRESS", "") if address == "auto" else address)
    # mgvr prints its own progress and one-line errors: Ray's logs go to its session folder.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    try:
        ray.init(address=None if address == "auto" else address, logging_level=logging.ERROR,
                 log_to_driver=False, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--ray {address}: cannot join the Ray cluster ({first}); start one "
                         "with `ray start --head`, or pass its address") from None
    nodes = [node for node in ray.nodes() if node["Alive"]]
    return ClusterInfo([(node["NodeID"], node["NodeManagerAddress"]) for node in nodes],
                       sum(node["Resources"].get("CPU", 0) for node in nodes),
                       int(sum(node["Resources"].get("GPU", 0) for node in nodes)))


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on fails here in seconds: Ray itself would retry for
    minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto" without $RAY_ADDRESS, or a ray:// client address: Ray decides
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UsageError(f"--ray {address}: no Ray cluster answers there ({e.strerror or e}); "
                         "start one with `ray start --head`, or pass its address") from None


def disconnect() -> None:
    import ray

    ray.shutdown()


def node_problems(paths: list[str]) -> list[tuple[str, str]]:
    """(kind, what) this node lacks: "storage" for a path it cannot see or read, "ffmpeg"."""
    from mgvr.indexer import decode

    problems = []
    for path in paths:
        if not os.path.isdir(path):
            problems.append(("storage", f"cannot see {path}"))
        elif not os.access(path, os.R_OK | os.X_OK):
            problems.append(("storage", f"cannot read {path}"))
    for tool in ("ffprobe", "ffmpeg"):
        try:
            decode.tool(tool)
        except DecoderMissingError as e:
            problems.append(("ffmpeg", str(e)))
    return problems


def check_nodes(cluster: ClusterInfo, paths: list[Path]) -> None:
    """Run `node_problems` once on every node (a task pinned to each); raise one line naming
    every node and what it lacks."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0, max_retries=0)(node_problems)
    refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
            .remote([str(p) for p in paths]) for node_id, _ in cluster.nodes]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=NODE_CHECK_TIMEOUT_S)
    found: list[tuple[str, str]] = []
    for (node_id, ip), ref in zip(cluster.nodes, refs, strict=True):
        where = f"node {ip} ({node_id[:8]})"
        if ref not in ready:
            found.append(("storage", f"{where}: did not answer within "
                                     f"{NODE_CHECK_TIMEOUT_S:.0f}s"))
            continue
        found += [(kind, f"{where}: {what}") for kind, what in ray.get(ref)]
    if not found:
        return
    text = "; ".join(what for _, what in found)
    if any(kind == "ffmpeg" for kind, _ in found):
        raise DecoderMissingError(f"{text}; install FFmpeg on every node of the cluster")
    raise UsageError(f"{text}; every Ray node must see the video folder and the index at the "
                     "same paths (a shared file system mounted alike on each)")
