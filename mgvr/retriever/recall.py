"""First stage: top-k clips by coarse score, on FAISS (CPU or GPU) or as exact torch search on GPU.

On the CPU the index's own layout is searched (exact below IVF_MIN_CLIPS clips, IVF above; see
`mgvr.storage.coarse`). On a GPU, FAISS GPU is used when the installed faiss was built with it;
otherwise every vector goes to the GPU in float16 and is searched exactly with one matmul, which
is faster there than any CPU index and needs no approximation.

A filter (folder, file name, dates) arrives as the sorted ids of the clips it allows and is
applied inside the search (a FAISS IDSelector), so a filtered query gets the best allowed
clips however far outside the unfiltered top k they lie.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import torch

from mgvr.storage.coarse import CoarseIndex


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def search_on_one_thread() -> None:
    """Let FAISS answer the calling thread's searches on one OpenMP thread.

    A single query is answered faster on one thread: on a small, shared CPU, OpenMP's thread
    barriers cost far more than the scan (measured on 2 busy cores: 40 ms vs 7.5 ms at
    100,000 vectors). OpenMP keeps this count per thread, so each thread that searches calls
    this once when it starts (`mgvr search`'s main thread, each of `mgvr serve`'s search
    threads), never per query.
    """
    faiss.omp_set_num_threads(1)


def _empty(queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)


def _filtered_search(index: faiss.Index, queries: np.ndarray, k: int,
                     allowed_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS search restricted to `allowed_ids` with an IDSelector.

    Exact indexes visit every vector, so they return min(k, allowed) hits. An IVF index scans
    only nprobe lists, which hold about nprobe / nlist of the allowed clips: nprobe is raised
    by 1 / (allowed fraction) to keep as many allowed candidates as an unfiltered search sees,
    and when a query still comes back short of k it is asked again over every list, which
    is exact on the allowed set.
    """
    selector = faiss.IDSelectorBatch(allowed_ids)
    queries = np.ascontiguousarray(queries, np.float32)
    if not isinstance(index, faiss.IndexIVF):
        return index.search(queries, k, params=faiss.SearchParameters(sel=selector))
    fraction = len(allowed_ids) / max(index.ntotal, 1)
    nprobe = min(index.nlist, math.ceil(index.nprobe / max(fraction, 1e-9)))
    scores, ids = index.search(queries, k, params=faiss.SearchParametersIVF(
        sel=selector, nprobe=nprobe))
    if nprobe < index.nlist and (ids < 0).any():
        scores, ids = index.search(queries, k, params=faiss.SearchParametersIVF(
            sel=selector, nprobe=index.nlist))
    return scores, ids


class TorchExactSearch:
    """Every coarse vector on `device` in float16, searched exactly with one matmul (the GPU
    fallback; the same code runs on the CPU, which is how the tests check it)."""

    def __init__(self, coarse: CoarseIndex, device: torch.device) -> None:
        ids, vectors = coarse.items()
        self.vectors = torch.from_numpy(vectors).to(device, torch.float16)
        self.ids = torch.from_numpy(ids).to(device)

    def search(self, queries: np.ndarray, k: int,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        vectors, ids = self.vectors, self.ids
        if allowed_ids is not None:
            keep = torch.isin(ids, torch.from_numpy(allowed_ids).to(ids.device))
            vectors, ids = vectors[keep], ids[keep]
        k = min(k, len(ids))
        if k == 0:
            return _empty(queries)
        text = torch.from_numpy(queries).to(vectors.device, torch.float16)
        scores, rows = (text @ vectors.T).float().topk(k, dim=1)
        return scores.cpu().numpy(), ids[rows].cpu().numpy()


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

    def search(self, queries: np.ndarray, k: int,
               allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) float32 -> (scores, clip ids), each (Q, k'), best first; k' = min(k, size).

        `allowed_ids` (sorted int64 clip ids), when given, restricts the search to those clips
        (on a GPU index through the CPU copy, which has the selector). An unfiltered IVF search
        may return fewer than k' for a query: missing places have id -1.
        """
        k = min(k, len(self.coarse))
        if allowed_ids is not None:
            k = min(k, len(allowed_ids))
        if k <= 0:
            return _empty(queries)
        if self._torch is not None:
            return self._torch.search(queries, k, allowed_ids)
        if allowed_ids is not None:
            return _filtered_search(self.coarse.index, queries, k,
                                    np.ascontiguousarray(allowed_ids, np.int64))
        if self._gpu_index is not None:
            return self._gpu_index.search(np.ascontiguousarray(queries, np.float32), k)
        return self.coarse.search(queries, k)
