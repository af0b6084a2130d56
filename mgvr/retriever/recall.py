"""First stage: top-k clips by coarse score, on FAISS (CPU or GPU) or as exact torch search on GPU.

The FAISS GPU path is taken when the installed faiss was built with GPU support; otherwise a GPU
is still used through an exact inner-product search in torch, and the CPU uses FAISS.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from mgvr.storage.coarse import CoarseIndex


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class CoarseSearcher:
    def __init__(self, coarse: CoarseIndex, device: torch.device) -> None:
        self.coarse = coarse
        self.backend = "faiss-cpu"
        self._index = coarse.index
        self._torch: tuple[torch.Tensor, torch.Tensor] | None = None
        if device.type == "cuda" and len(coarse):
            if faiss_has_gpu():
                self._resources = faiss.StandardGpuResources()
                self._index = faiss.index_cpu_to_gpu(self._resources, device.index or 0,
                                                     coarse.index)
                self.backend = "faiss-gpu"
            else:
                vectors = torch.from_numpy(coarse.vectors()).to(device, torch.float16)
                self._torch = (vectors, torch.from_numpy(coarse.ids()).to(device))
                self.backend = "torch-gpu"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) float32 -> (scores, clip ids), each (Q, k'), best first; k' = min(k, size)."""
        k = min(k, len(self.coarse))
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        if self._torch is not None:
            vectors, ids = self._torch
            text = torch.from_numpy(queries).to(vectors.device, torch.float16)
            scores, rows = (text @ vectors.T).float().topk(k, dim=1)
            return scores.cpu().numpy(), ids[rows].cpu().numpy()
        scores, ids = self._index.search(np.ascontiguousarray(queries, np.float32), k)
        return scores, ids
