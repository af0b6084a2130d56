"""The coarse store: one normalised vector per clip in a FAISS inner-product index keyed by clip id.

Each committed generation is a separate file written beside the previous one and renamed into
place, so a reader holding generation g is never disturbed by a writer producing g + 1.

The layout follows the size, and the FAISS file records it (its index type, `nlist` and the
calibrated `nprobe` are part of the file):

- exact: `IndexIDMap2(IndexFlatIP)` while the index holds fewer than IVF_MIN_CLIPS vectors;
- ivf: `IndexIVFFlat` (inner product, ids stored in the inverted lists, so `add_with_ids` and
  `remove_ids` work as before) from IVF_MIN_CLIPS on. `nlist` is the power of two nearest
  sqrt(N); `nprobe` is the smallest power of two whose recall@50 against exact search reaches
  CALIBRATION_RECALL on pseudo-queries: stored vectors buried in noise down to cosine ~0.45
  with their source, which sit off the data as text queries do. (On the synthetic 1M-clip
  benchmark index they ask for 2x the nprobe that text-like queries need for 0.98; noise down
  to cosine 0.32 asked for 4x: 512 of 1024 lists.)

`fit_layout()`, which `save()` calls, (re)builds when the size left the current layout's range:
flat -> IVF at IVF_MIN_CLIPS, IVF -> flat below half of it, and a new IVF when N left
[nlist^2 / 4, 4 nlist^2], i.e. after the index grew (or shrank) at least 2x since training. So
(re)training cost is geometric in the index size, and a committed file is always searchable.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist

from mgvr.errors import IncompatibleIndexError

IVF_MIN_CLIPS = 50_000
MIN_NLIST = 64
TRAINING_POINTS_PER_LIST = 64  # faiss warns below 39; more buys little and costs time
CALIBRATION_QUERIES = 256
CALIBRATION_K = 50  # the default rerank depth: what recall is about
CALIBRATION_RECALL = 0.98
CALIBRATION_NOISE = 2.0  # noise norm relative to the unit vector: cosine 1/sqrt(1 + 4) ~ 0.45


def nlist_for(size: int) -> int:
    """Inverted lists for `size` vectors: the power of two nearest sqrt(size), at least 64."""
    return max(MIN_NLIST, 2 ** round(math.log2(max(size, 1)) / 2))


class CoarseIndex:
    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def empty(cls, dim: int) -> CoarseIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)))

    @classmethod
    def load(cls, path: Path, dim: int) -> CoarseIndex:
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise IncompatibleIndexError(
                f"{path}: unreadable FAISS file ({str(e).splitlines()[0]}); "
                "run `mgvr verify --repair` or re-index") from e
        if index.d != dim:
            raise IncompatibleIndexError(f"{path}: vectors have {index.d} dims, the index config "
                                         f"says {dim}; re-index into a fresh --index")
        if not isinstance(index, faiss.IndexIDMap2 | faiss.IndexIVFFlat):
            raise IncompatibleIndexError(f"{path}: unexpected FAISS index type "
                                         f"{type(index).__name__}; re-index into a fresh --index")
        return cls(index)

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def kind(self) -> str:
        """'exact' (flat) or 'ivf'."""
        return "ivf" if isinstance(self.index, faiss.IndexIVF) else "exact"

    def describe(self) -> dict[str, int | str]:
        """The layout, for status output: kind, size, and nlist / nprobe for IVF."""
        info: dict[str, int | str] = {"kind": self.kind, "clips": len(self)}
        if isinstance(self.index, faiss.IndexIVF):
            info.update(nlist=int(self.index.nlist), nprobe=int(self.index.nprobe))
        return info

    def __len__(self) -> int:
        return self.index.ntotal

    def add(self, clip_ids: np.ndarray, vectors: np.ndarray) -> None:
        """(N,) int64 ids, (N, D) float32 normalised vectors."""
        if len(clip_ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                    np.ascontiguousarray(clip_ids, dtype=np.int64))

    def remove(self, clip_ids: list[int]) -> int:
        if not clip_ids:
            return 0
        return int(self.index.remove_ids(np.asarray(clip_ids, dtype=np.int64)))

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All (N,) int64 clip ids and their (N, D) float32 vectors, in one order."""
        if isinstance(self.index, faiss.IndexIVF):
            ids, vectors = [np.empty(0, np.int64)], [np.empty((0, self.dim), np.float32)]
            for list_no in range(self.index.nlist):
                list_ids, codes = get_invlist(self.index.invlists, list_no)
                ids.append(list_ids.astype(np.int64))
                vectors.append(codes.view(np.float32).reshape(len(list_ids), self.dim))
            return np.concatenate(ids), np.concatenate(vectors)
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return ids, self.index.index.reconstruct_n(0, self.index.ntotal)

    def ids(self) -> np.ndarray:
        return self.items()[0]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) float32 -> scores (Q, k') and clip ids (Q, k'), k' = min(k, size), best first.

        IVF may find fewer than k' for a query; the rest are padded with id -1.
        """
        k = min(k, len(self))
        if k == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    # layout by size -------------------------------------------------------------------------
    def wanted_nlist(self) -> int:
        """0 for exact search, else the nlist this size calls for (the current one if in range)."""
        size = len(self)
        if isinstance(self.index, faiss.IndexIVF):
            nlist = int(self.index.nlist)
            if size < IVF_MIN_CLIPS // 2:  # hysteresis: no flip-flop around the threshold
                return 0
            if nlist * nlist / 4 <= size <= 4 * nlist * nlist or nlist_for(size) == nlist:
                return nlist
            return nlist_for(size)
        return nlist_for(size) if size >= IVF_MIN_CLIPS else 0

    def fit_layout(self) -> bool:
        """Rebuild as exact or IVF when the size calls for another layout; True if rebuilt."""
        nlist = self.wanted_nlist()
        current = int(self.index.nlist) if isinstance(self.index, faiss.IndexIVF) else 0
        if nlist == current:
            return False
        ids, vectors = self.items()
        if nlist == 0:
            rebuilt = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            rebuilt.add_with_ids(vectors, ids)
        else:
            rebuilt = build_ivf(ids, vectors, nlist)
        self.index = rebuilt
        return True

    def save(self, path: Path) -> None:
        """Fit the layout to the size, then write atomically: a crash leaves no file or a
        complete one."""
        self.fit_layout()
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)


def build_ivf(ids: np.ndarray, vectors: np.ndarray, nlist: int,
              seed: int = 0) -> faiss.IndexIVFFlat:
    """Train an IVF of `nlist` lists on a sample of (N, D) `vectors`, add them all with their
    (N,) `ids`, and calibrate nprobe."""
    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    sample = min(len(vectors), nlist * TRAINING_POINTS_PER_LIST)
    index.train(np.ascontiguousarray(vectors[np.sort(rng.choice(len(vectors), sample,
                                                                replace=False))]))
    index.add_with_ids(np.ascontiguousarray(vectors), ids)
    index.nprobe = calibrate_nprobe(index, vectors, ids, rng)
    return index


def calibrate_nprobe(index: faiss.IndexIVF, vectors: np.ndarray, ids: np.ndarray,
                     rng: np.random.Generator) -> int:
    """Smallest power-of-two nprobe whose recall@CALIBRATION_K on noisy pseudo-queries reaches
    CALIBRATION_RECALL against exact search over (N, D) `vectors` with (N,) `ids`."""
    sources = vectors[rng.choice(len(vectors), min(CALIBRATION_QUERIES, len(vectors)),
                                 replace=False)]
    noise = rng.standard_normal(sources.shape).astype(np.float32)
    noise *= CALIBRATION_NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    queries = sources + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = min(CALIBRATION_K, len(vectors))
    _, rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    exact = ids[rows]
    nprobe = 1
    while nprobe < index.nlist:
        index.nprobe = nprobe
        _, found = index.search(queries, k)
        if recall_at_k(found, exact) >= CALIBRATION_RECALL:
            return nprobe
        nprobe *= 2
    return int(index.nlist)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact|: (Q, k) ids each (-1 padding ignored)."""
    hits = [len(set(f[f >= 0].tolist()) & set(e.tolist())) / max(len(e), 1)
            for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits)) if hits else 1.0
