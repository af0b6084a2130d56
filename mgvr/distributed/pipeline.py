"""run_ray: the index run's stages as Ray Data operators, the alternative to
indexer.pipeline.run_local. The same stage functions (indexer.stages) and EncodeStage run on
the workers; this process (the driver) assembles files and commits, as a local run does.

    FileEntry --probe (tasks)--> DecodeJob | FileFailure
      --repartition: one job a block, so a long film's jobs spread over the cluster
      --decode (tasks, one ffmpeg each)--> DecodedClipOf | FileFailure
      --encode (actor pool: one GPU actor per GPU, else CPU actors)--> EncodedClipOf
      --> driver: Assembly -> IndexWriter -> Commit

Ray Data streams the operators with backpressure, so memory stays bounded on any corpus. An
MgvrError on a worker comes back as a row (distributed.records) and the driver raises it: one
line, and nothing committed that was not committed before.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mgvr.config import IndexConfig
from mgvr.distributed.cluster import ClusterInfo, check_nodes, connect, disconnect
from mgvr.distributed.encode import EncodeActor
from mgvr.distributed.records import WorkerError, decode_rows, pack, probe_rows, unpack
from mgvr.errors import UsageError
from mgvr.indexer import discover
from mgvr.indexer.assembly import Assembly
from mgvr.indexer.decode import FrameRecipe
from mgvr.indexer.options import IndexOptions, Progress
from mgvr.indexer.stages import FileFailure

# Ray resources per task: ffprobe is brief; an ffmpeg decoder uses about one core, but two per
# core keep the cores busy while ffmpeg waits on reads and on the pipe (as the local run's
# threads do), and leave room beside a CPU encode actor on a 2-core machine.
PROBE_CPUS = 0.25
DECODE_CPUS = 0.5
# A CPU encode actor: fractional, so it never waits for a whole free core (on a 2-core
# cluster whole-core actors and decode tasks starve each other).
ENCODE_CPUS = 0.5


@dataclass(frozen=True)
class Placement:
    """Where the encode actors run: one per GPU where the cluster has GPUs (unless --device
    cpu), else up to one CPU actor per node with a fractional core."""

    device: str
    actors: int
    gpus_per_actor: int

    @classmethod
    def for_cluster(cls, cluster: ClusterInfo, device: str | None) -> Placement:
        wants_gpu = device is not None and device.startswith("cuda")
        if wants_gpu and not cluster.gpus:
            raise UsageError(f"--device {device}: the Ray cluster has no GPUs; drop --device "
                             "to encode on CPU actors, or add nodes with GPUs")
        if cluster.gpus and (device is None or wants_gpu):
            return cls("cuda", cluster.gpus, 1)  # Ray shows each actor its own GPU as cuda:0
        return cls("cpu", max(1, len(cluster.nodes)), 0)

    def map_batches_args(self) -> dict:
        from ray.data import ActorPoolStrategy

        resources = {"num_gpus": 1} if self.gpus_per_actor else {"num_cpus": ENCODE_CPUS}
        return {"compute": ActorPoolStrategy(min_size=1, max_size=self.actors), **resources}

    def clip_batch(self, frames_per_clip: int) -> int:
        from mgvr.model.clip import frame_batch_size

        return max(1, frame_batch_size(self.device.split(":")[0]) // frames_per_clip)


def decode_dataset(entries: list[discover.FileEntry], clip_seconds: float, frames: int,
                   recipe: FrameRecipe, timeout_s: float):
    """The lazy Ray Dataset of the CPU stages: decoded clips and failures."""
    import ray

    return (ray.data.from_items([pack(entry) for entry in entries])
            .repartition(target_num_rows_per_block=1)
            .flat_map(probe_rows, fn_args=(clip_seconds, timeout_s), num_cpus=PROBE_CPUS)
            .repartition(target_num_rows_per_block=1)
            .flat_map(decode_rows, fn_args=(frames, recipe, timeout_s), num_cpus=DECODE_CPUS))


def dataset(entries: list[discover.FileEntry], root: Path, config: IndexConfig,
            recipe: FrameRecipe, options: IndexOptions, placement: Placement):
    """The lazy Ray Dataset of an index run's records (nothing runs until it is iterated)."""
    decoded = decode_dataset(entries, config.clip_seconds, config.frames_per_clip, recipe,
                             options.decode_timeout_s)
    return decoded.map_batches(
        EncodeActor, batch_size=placement.clip_batch(config.frames_per_clip),
        batch_format="numpy",
        fn_constructor_kwargs={"root": str(root), "config": config, "device": placement.device},
        **placement.map_batches_args())


def quiet_data_context() -> None:
    """mgvr prints its own progress, as in a local run: no Ray Data bars or banners."""
    import ray

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def run_ray(entries: list[discover.FileEntry], folder: Path, root: Path, config: IndexConfig,
            recipe: FrameRecipe, options: IndexOptions, assembly: Assembly,
            progress: Progress, after_batch: Callable[[], None],
            on_cluster: Callable[[ClusterInfo], None]) -> dict[str, float]:
    """Index `entries` on the cluster at options.ray_address; returns the driver's seconds per
    stage (connect: joining and checking the nodes, decode_wait: waiting for encoded clips,
    write: assembling and committing)."""
    started = time.perf_counter()
    cluster = connect(options.ray_address or "auto")
    try:
        on_cluster(cluster)
        check_nodes(cluster, [folder, root])
        quiet_data_context()
        ds = dataset(entries, root, config, recipe, options,
                     Placement.for_cluster(cluster, options.device))
        timings = {"connect": time.perf_counter() - started, "decode_wait": 0.0, "write": 0.0}
        progress.start(len(entries))
        try:
            _consume(ds, assembly, after_batch, timings)
        finally:
            progress.stop()
        return timings
    finally:
        disconnect()


def _consume(ds, assembly: Assembly, after_batch: Callable[[], None],
             timings: dict[str, float]) -> None:
    rows = iter(ds.iter_rows())
    while True:
        waited = time.perf_counter()
        row = next(rows, None)
        timings["decode_wait"] += time.perf_counter() - waited
        if row is None:
            return
        started = time.perf_counter()
        record = unpack(row)
        if isinstance(record, WorkerError):
            raise type(record.error)(f"Ray node {record.node}: {record.error}")
        if isinstance(record, FileFailure):
            assembly.fail(record)
        else:
            assembly.add(record.file, record.clip)
        after_batch()
        timings["write"] += time.perf_counter() - started
