"""The coarse store: one normalised vector per clip in a FAISS inner-product index keyed by clip id.

Each committed generation is a separate file written beside the previous one and renamed into
place, so a reader holding generation g is never disturbed by a writer producing g + 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from mgvr.errors import IncompatibleIndexError


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
        return cls(index)

    @property
    def dim(self) -> int:
        return self.index.d

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

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def vectors(self) -> np.ndarray:
        """All stored vectors in the order of `ids()` (exact indexes only)."""
        return self.index.index.reconstruct_n(0, self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) float32 -> scores (Q, k') and clip ids (Q, k'), k' = min(k, size), best first."""
        k = min(k, len(self))
        if k == 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves either no file or a complete one."""
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
