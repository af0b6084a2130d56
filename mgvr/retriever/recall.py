"""First stage: top-k clips by coarse score, on FAISS (CPU or GPU) or as exact torch search on GPU.

On the CPU the index's own layout is searched (exact below IVF_MIN_CLIPS clips, IVF above; see
`mgvr.storage.coarse`). On a GPU, FAISS GPU is used when the installed faiss was built with it;
otherwise every vector goes to the GPU in float16 and is searched exactly with one matmul, which
is faster there than any CPU index and needs no approximation.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch

from mgvr.storage.coarse import CoarseIndex


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class TorchExactSearch:
    """Every coarse vector on `device` in float16, searched exactly with one matmul (the GPU
    fallback; the same code runs on the CPU, which is how the tests check it)."""

    def __init__(self, coarse: CoarseIndex, device: torch.device) -> None:
        ids, vectors = coarse.items()
        self.vectors = torch.from_numpy(vectors).to(device, torch.float16)
        self.ids = torch.from_numpy(ids).to(device)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        text = torch.from_numpy(queries).to(self.vectors.device, torch.float16)
        scores, rows = (text @ self.vectors.T).float().topk(k, dim=1)
        return scores.cpu().numpy(), self.ids[rows].cpu().numpy()


class CoarseSearcher:
    def __init__(self, coarse: CoarseIndex, device: torch.device) -> None:
        self.coarse = coarse
        self.backend = f"faiss-cpu-{coarse.kind}"
        self._gpu_index: faiss.Index | None = None
        self._torch: TorchExactSearch | None = None
        if device.type == "cuda" and len(coarse):
            if faiss_has_gpu():
                self._resources = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._resources, device.index or 0,
                                                         coarse.index)
                self.backend = f"faiss-gpu-{coarse.kind}"
            else:
                self._torch = TorchExactSearch(coarse, device)
                self.backend = "torch-gpu-exact"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) float32 -> (scores, clip ids), each (Q, k'), best first; k' = min(k, size).

        An IVF index may return fewer than k' for a query: missing places have id -1.
        """
        k = min(k, len(self.coarse))
        if k <= 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        if self._torch is not None:
            return self._torch.search(queries, k)
        if self._gpu_index is not None:
            return self._gpu_index.search(np.ascontiguousarray(queries, np.float32), k)
        return self.coarse.search(queries, k)
