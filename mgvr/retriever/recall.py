"""First stage: top-k clips by coarse score over the index's immutable segments.

Each segment is searched with its own calibrated parameters; removed clips (tombstones) and an
optional filter (allowed clip ids) are applied INSIDE the FAISS search with an ID selector, so
a dead or filtered-out clip never takes a place in the top k; the segments' answers are then
merged into one top k.

Backends per segment: FAISS on the CPU; on a CUDA device, FAISS GPU when the installed faiss has
it (over-fetching by the segment's tombstone count and dropping them, since GPU indexes take no
ID selector; a filtered search of such a segment runs on the CPU copy), else, and for segments
with many tombstones, exact float16 matmul with torch on the GPU.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

from mgvr.storage.catalog import SegmentRecord
from mgvr.storage.coarse import (
    SegmentLayout,
    inverted_list_ids,
    search_parameters,
    segment_items,
)

GPU_MAX_K = 2048  # FAISS GPU's largest k
TOMBSTONE_SLACK = 50  # extra places asked of a segment with tombstones before filtering them
_query_threads: ThreadPoolExecutor | None = None
_query_threads_lock = threading.Lock()


def _single_query_threads() -> ThreadPoolExecutor:
    """Threads of their own for single-query FAISS searches, each set once to one OpenMP
    thread: on a small, shared CPU, OpenMP's thread barriers cost far more than the scan
    (measured on 2 busy cores: recall p50 210 ms on two threads vs 0.6 ms on one, 7 small
    segments). OpenMP keeps that setting per thread and shares it with torch, so it is made on
    these threads only: the callers' threads (their encoding, a later IVF training) keep
    theirs."""
    global _query_threads
    with _query_threads_lock:
        if _query_threads is None:
            _query_threads = ThreadPoolExecutor(
                max(4, os.cpu_count() or 1), thread_name_prefix="faiss-query",
                initializer=faiss.omp_set_num_threads, initargs=(1,))
        return _query_threads


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def id_bitmap(ids: np.ndarray, size: int, value: bool) -> np.ndarray:
    """A FAISS IDSelectorBitmap bitmap of `size` ids where `ids` are `value` and all others
    are not (bit i of byte i // 8, least significant first)."""
    bits = np.full(size, not value, bool)
    bits[ids[(ids >= 0) & (ids < size)]] = value
    return np.packbits(bits, bitorder="little")


@dataclass
class LoadedSegment:
    record: SegmentRecord
    index: faiss.Index
    dead: np.ndarray  # (n,) int64 tombstoned ids in this segment, sorted

    _ids: np.ndarray | None = field(default=None, init=False, repr=False)  # sorted, lazily

    def live_among(self, allowed: np.ndarray) -> int:
        """How many of the (sorted) allowed ids are live clips of this segment (its id list
        is read once, 8 bytes a vector)."""
        if self._ids is None:
            self._ids = np.sort(segment_items(self.index)[0]) if self.record.kind == "flat" \
                else np.sort(np.concatenate(
                    [inverted_list_ids(self.index, n) for n in range(self.record.nlist or 0)]
                    or [np.empty(0, np.int64)]))
        positions = np.minimum(np.searchsorted(self._ids, allowed), max(len(self._ids) - 1, 0))
        inside = allowed[(self._ids[positions] == allowed)] if len(self._ids) else allowed[:0]
        return int(len(inside) - self.is_dead(inside).sum())

    def is_dead(self, ids: np.ndarray) -> np.ndarray:
        """Which of `ids` are tombstones (a binary search in the sorted dead ids)."""
        if not len(self.dead):
            return np.zeros(ids.shape, bool)
        positions = np.minimum(np.searchsorted(self.dead, ids), len(self.dead) - 1)
        return self.dead[positions] == ids

    @property
    def layout(self) -> SegmentLayout:
        r = self.record
        return SegmentLayout(r.kind, r.rows, r.nlist, r.nprobe, r.ef_search)


class TorchExactSearch:
    """Vectors on `device` in float16, searched exactly with one matmul (the GPU fallback; the
    same code runs on the CPU, which is how the tests check it). Masked ids never come back."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, device: torch.device) -> None:
        self.vectors = torch.from_numpy(vectors).to(device, torch.float16)
        self.ids = torch.from_numpy(ids).to(device)

    def search(self, queries: np.ndarray, k: int, excluded: np.ndarray | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        text = torch.from_numpy(queries).to(self.vectors.device, torch.float16)
        scores = (text @ self.vectors.T).float()
        keep = torch.ones(len(self.ids), dtype=torch.bool, device=scores.device)
        if excluded is not None and len(excluded):
            keep &= ~torch.isin(self.ids, torch.from_numpy(excluded).to(self.ids.device))
        if allowed is not None:
            keep &= torch.isin(self.ids, torch.from_numpy(allowed).to(self.ids.device))
        scores = scores.masked_fill(~keep, float("-inf"))
        k = min(k, int(keep.sum()))
        top, rows = scores.topk(k, dim=1)
        return top.cpu().numpy(), self.ids[rows].cpu().numpy()


class GpuPlacements:
    """Segments copied to a GPU, kept across generations (segments are immutable, so a commit
    re-uses every copy but the new segment's). FAISS GPU indexes are not thread-safe, even to
    search: their searches take `lock`."""

    def __init__(self) -> None:
        self.copies: dict[tuple[str, str], object] = {}
        self.lock = threading.Lock()
        self.resources = None

    def copy(self, segment: LoadedSegment, device: torch.device) -> tuple[object, str]:
        """(the segment's GPU copy, its backend name)."""
        if faiss_has_gpu() and len(segment.dead) <= GPU_MAX_K // 2:
            key = (segment.record.name, "faiss")
            if key not in self.copies:
                try:
                    if self.resources is None:
                        self.resources = faiss.StandardGpuResources()
                    self.copies[key] = faiss.index_cpu_to_gpu(self.resources, device.index or 0,
                                                              segment.index)
                except RuntimeError:  # a layout FAISS GPU cannot take: torch serves it
                    self.copies[key] = None
            if self.copies[key] is not None:
                return self.copies[key], f"faiss-gpu-{segment.record.kind}"
        key = (segment.record.name, "torch")
        if key not in self.copies:
            self.copies[key] = TorchExactSearch(*segment_items(segment.index), device)
        return self.copies[key], "torch-gpu-exact"

    def keep_only(self, names: set[str]) -> None:
        self.copies = {key: copy for key, copy in self.copies.items() if key[0] in names}


class CoarseSearcher:
    """The segments of one generation, ready to search on `device` (`gpu`: the copies already
    on the GPU, shared with earlier generations' searchers)."""

    def __init__(self, segments: list[LoadedSegment], id_limit: int,
                 device: torch.device, gpu: GpuPlacements | None = None) -> None:
        self.segments = segments
        self.id_limit = id_limit  # every clip id is below it (the catalog's next_clip_id)
        self.device = device
        self._live_bitmaps = {s.record.name: id_bitmap(s.dead, id_limit, False)
                              for s in segments if len(s.dead)}
        self.backends: dict[str, str] = {}
        self._gpu: dict[str, object] = {}
        self._placements = gpu or GpuPlacements()
        for segment in segments:
            name = segment.record.name
            if device.type != "cuda" or segment.record.rows == 0:
                self.backends[name] = f"faiss-cpu-{segment.record.kind}"
            else:
                self._gpu[name], self.backends[name] = self._placements.copy(segment, device)
        self._placements.keep_only({s.record.name for s in segments})

    def __len__(self) -> int:
        return sum(s.record.rows - len(s.dead) for s in self.segments)

    def describe(self) -> list[dict[str, object]]:
        return [{"name": s.record.name, "kind": s.record.kind, "clips": s.record.rows,
                 "dead": len(s.dead), "nlist": s.record.nlist, "nprobe": s.record.nprobe,
                 "backend": self.backends[s.record.name]} for s in self.segments]

    def search(self, queries: np.ndarray, k: int,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) float32 -> (scores, clip ids), each (Q, k') best first, over live clips
        (and only `allowed_ids`, sorted int64, when given). Missing places have id -1."""
        queries = np.ascontiguousarray(queries, np.float32)
        if len(queries) == 1 and self.device.type == "cpu":
            return _single_query_threads().submit(self._search, queries, k, allowed_ids).result()
        return self._search(queries, k, allowed_ids)

    def _search(self, queries: np.ndarray, k: int,
                allowed_ids: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        allowed_bitmap = None
        if allowed_ids is not None:
            allowed_bitmap = id_bitmap(allowed_ids, self.id_limit, True)
        found = [self._search_segment(s, queries, k, allowed_ids, allowed_bitmap)
                 for s in self.segments]
        found = [(scores, ids) for scores, ids in found if ids.shape[1]]
        if not found:
            return (np.empty((len(queries), 0), np.float32),
                    np.empty((len(queries), 0), np.int64))
        scores = np.concatenate([s for s, _ in found], axis=1)
        ids = np.concatenate([i for _, i in found], axis=1)
        scores = np.where(ids >= 0, scores, -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        return scores.astype(np.float32), np.where(np.isfinite(scores), ids, -1)

    @staticmethod
    def _search_past_tombstones(segment: LoadedSegment, queries: np.ndarray,
                                k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Top k live clips from an unfiltered search for k + max(k, TOMBSTONE_SLACK), when it
        holds min(k, live clips) live ones for every query (else None: search with the
        selector); places beyond the segment's live clips come back empty (-1). Exactly what
        the selector search gives, since every live clip beyond the answer scores below it, and
        cheaper: FAISS's scan with an ID selector measured 5.9 ms instead of 3.2 ms at 1M
        vectors (IVF-SQ8, nprobe 128, 5% tombstones)."""
        wanted = min(k + max(k, TOMBSTONE_SLACK), segment.record.rows)
        scores, ids = segment.index.search(queries, wanted,
                                           params=search_parameters(segment.layout))
        live = (ids >= 0) & ~segment.is_dead(ids)
        if (live.sum(axis=1) < np.minimum(k, segment.record.rows - len(segment.dead))).any():
            return None
        order = np.argsort(~live, axis=1, kind="stable")[:, :k]  # live ones, still best first
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        # A segment with fewer live clips than k: the places left over are empty, not dead.
        alive = np.take_along_axis(live, order, 1)
        return np.where(alive, scores, -np.inf), np.where(alive, ids, -1)

    def _search_segment(self, segment: LoadedSegment, queries: np.ndarray, k: int,
                        allowed_ids: np.ndarray | None,
                        allowed_bitmap: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        name = segment.record.name
        k = min(k, segment.record.rows)
        if k == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        placed = self._gpu.get(name)
        if isinstance(placed, TorchExactSearch):
            return placed.search(queries, k, segment.dead, allowed_ids)
        if placed is not None and allowed_ids is None and k + len(segment.dead) <= GPU_MAX_K:
            with self._placements.lock:
                scores, ids = placed.search(queries, k + len(segment.dead))
            ids = np.where(segment.is_dead(ids), -1, ids)
            return scores, ids
        if allowed_ids is None and len(segment.dead):
            found = self._search_past_tombstones(segment, queries, k)
            if found is not None:
                return found
        bitmap = self._live_bitmaps.get(name)
        if allowed_bitmap is not None:
            bitmap = allowed_bitmap if bitmap is None else np.bitwise_and(bitmap, allowed_bitmap)
        selector = None
        if bitmap is not None:
            selector = faiss.IDSelectorBitmap(self.id_limit, faiss.swig_ptr(bitmap))
        scores, ids = segment.index.search(queries, k,
                                           params=search_parameters(segment.layout, selector))
        if allowed_ids is not None and segment.record.kind != "flat" \
                and ((ids >= 0).sum(axis=1) < min(k, segment.live_among(allowed_ids))).any():
            # A filter can leave the probed lists short of allowed clips: probe every list, so
            # a filter never returns fewer hits than exist.
            everywhere = search_parameters(segment.layout, selector, nprobe=segment.record.nlist)
            scores, ids = segment.index.search(queries, k, params=everywhere)
        return scores, ids
