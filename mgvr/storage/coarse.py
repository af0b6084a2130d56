"""The coarse store: one normalised vector per clip, in immutable FAISS segments keyed by clip id.

A commit writes one new segment with only the vectors it adds; removed clips become tombstones
in the catalog, applied inside the FAISS search by an ID selector; merges (`storage.merge`)
replace several segments by one and drop their tombstones. A segment's layout follows its size
and is recorded in the catalog:

- `flat`: `IndexIDMap2(IndexFlatIP)`, exact, below FLAT_MAX_ROWS vectors (every commit's own
  segment is flat unless it is very large, so a commit never trains anything);
- `ivf-flat` from FLAT_MAX_ROWS, `ivf-sq8` (8-bit scalar quantised lists, a quarter of the
  memory) from SQ8_MIN_ROWS: an inverted file whose coarse quantizer is an HNSW graph, so the
  list lookup stays cheap with many lists. `nlist` grows with the size (nlist_for); `nprobe`
  and the quantizer's `efSearch` are calibrated when the segment is built: the smallest
  power-of-two nprobe whose recall@50 against exact search reaches CALIBRATION_RECALL on
  pseudo-queries (stored vectors buried in noise down to cosine ~0.45 with their source, which
  sit off the data as text queries do).

Files are written to a temporary name, fsynced and renamed; the catalog records each file's
sha256, and `load_segment` checks it before FAISS parses a byte.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from mgvr.errors import IndexDamagedError
from mgvr.hashing import sha256_file

FLAT_MAX_ROWS = 50_000
SQ8_MIN_ROWS = 250_000
MIN_NLIST = 64
HNSW_NEIGHBOURS = 32
TRAINING_POINTS_PER_LIST = 40  # faiss warns below 39
MIN_TRAINING_POINTS = 65_536
ADD_CHUNK = 65_536  # vectors added to an IVF at a time (bounds the temporary memory)
PIECE_ROWS = 8192  # vectors of a flat segment per piece of segment_pieces
CALIBRATION_QUERIES = 256
CALIBRATION_K = 50  # the default rerank depth: what recall is about
CALIBRATION_RECALL = 0.98
CALIBRATION_NOISE = 2.0  # noise norm relative to the unit vector: cosine 1/sqrt(1 + 4) ~ 0.45


@dataclass(frozen=True)
class SegmentLayout:
    kind: str  # flat, ivf-flat, ivf-sq8
    rows: int
    nlist: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None


def kind_for(rows: int) -> str:
    if rows < FLAT_MAX_ROWS:
        return "flat"
    return "ivf-sq8" if rows >= SQ8_MIN_ROWS else "ivf-flat"


def nlist_for(rows: int) -> int:
    """Inverted lists for `rows` vectors: the power of two nearest 4 sqrt(rows), at least 64
    (an HNSW quantizer keeps the list lookup cheap, so lists can be many and short), and at
    most what TRAINING_POINTS_PER_LIST points per list allow."""
    wanted = max(MIN_NLIST, 2 ** round(math.log2(4 * math.sqrt(max(rows, 1)))))
    trainable = 2 ** int(math.log2(max(rows // TRAINING_POINTS_PER_LIST, 1)))
    return max(1, min(wanted, trainable))


def build_segment(ids: np.ndarray, vectors: np.ndarray, kind: str | None = None,
                  seed: int = 0) -> tuple[faiss.Index, SegmentLayout]:
    """A segment over (N,) int64 `ids` and their (N, D) float32 normalised `vectors`."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    kind = kind or kind_for(len(ids))
    if kind == "flat":
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        index.add_with_ids(vectors, ids)
        return index, SegmentLayout("flat", len(ids))
    rng = np.random.default_rng(seed)
    nlist = nlist_for(len(ids))
    codec = "SQ8" if kind == "ivf-sq8" else "Flat"
    index = faiss.index_factory(vectors.shape[1], f"IVF{nlist}_HNSW{HNSW_NEIGHBOURS},{codec}",
                                faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    ivf.by_residual = False  # lists hold the vectors themselves: decodable without centroids
    # Enough points that the SQ8 ranges (per dimension, from the sample) cover the data too.
    sample = min(len(vectors), max(nlist * TRAINING_POINTS_PER_LIST, MIN_TRAINING_POINTS))
    index.train(vectors[np.sort(rng.choice(len(vectors), sample, replace=False))])
    for start in range(0, len(ids), ADD_CHUNK):
        index.add_with_ids(vectors[start:start + ADD_CHUNK], ids[start:start + ADD_CHUNK])
    nprobe, ef_search = calibrate(index, vectors, ids, rng)
    ivf.nprobe = nprobe
    faiss.downcast_index(ivf.quantizer).hnsw.efSearch = ef_search
    return index, SegmentLayout(kind, len(ids), nlist, nprobe, ef_search)


def search_parameters(layout: SegmentLayout, selector: faiss.IDSelector | None = None,
                      nprobe: int | None = None) -> faiss.SearchParameters | None:
    """FAISS search parameters of a segment: its calibrated nprobe / efSearch and an optional
    ID selector (tombstones, filters)."""
    if layout.kind == "flat":
        return faiss.SearchParameters(sel=selector) if selector is not None else None
    nprobe = nprobe or layout.nprobe or 1
    ef_search = max(layout.ef_search or 0, 2 * nprobe)
    return faiss.SearchParametersIVF(
        sel=selector, nprobe=nprobe,
        quantizer_params=faiss.SearchParametersHNSW(efSearch=ef_search))


def _ef_for(nprobe: int) -> int:
    return max(64, 2 * nprobe)


def calibrate(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray,
              rng: np.random.Generator) -> tuple[int, int]:
    """(nprobe, efSearch): the smallest power-of-two nprobe whose recall@CALIBRATION_K on noisy
    pseudo-queries reaches CALIBRATION_RECALL against exact search over (N, D) `vectors`."""
    sources = vectors[rng.choice(len(vectors), min(CALIBRATION_QUERIES, len(vectors)),
                                 replace=False)]
    noise = rng.standard_normal(sources.shape).astype(np.float32)
    noise *= CALIBRATION_NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    queries = sources + noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    k = min(CALIBRATION_K, len(vectors))
    _, rows = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
    exact = ids[rows]
    nlist = faiss.extract_index_ivf(index).nlist
    nprobe = 1
    while nprobe < nlist:
        layout = SegmentLayout("ivf", len(ids), nlist, nprobe, _ef_for(nprobe))
        _, found = index.search(queries, k, params=search_parameters(layout))
        if recall_at_k(found, exact) >= CALIBRATION_RECALL:
            break
        nprobe *= 2
    nprobe = min(nprobe, nlist)
    return nprobe, _ef_for(nprobe)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / |exact|: (Q, k) ids each (-1 padding ignored)."""
    hits = [len(set(f[f >= 0].tolist()) & set(e.tolist())) / max(len(e), 1)
            for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits)) if hits else 1.0


def write_segment(index: faiss.Index, path: Path) -> None:
    """Write atomically: a crash leaves no file or a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def load_segment(path: Path, dim: int, sha256: str | None,
                 lists_on_disk: bool = False) -> faiss.Index:
    """A segment file, checked against its recorded sha256 (None: unchecked, for verify's own
    diagnosis) before FAISS reads it. With `lists_on_disk`, an IVF segment's inverted lists
    stay in the file (FAISS maps it and reads nothing of them), for `segment_pieces` to read
    one list at a time: a walk over every vector then never holds the segment whole."""
    if sha256 is not None:
        try:
            actual = sha256_file(path)
        except FileNotFoundError as e:
            raise IndexDamagedError(f"{path}: missing; run `mgvr verify --repair`") from e
        if actual != sha256:
            raise IndexDamagedError(f"{path}: fails its checksum (damaged on disk); run "
                                    "`mgvr verify --repair`")
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if lists_on_disk else 0)
    except RuntimeError as e:
        raise IndexDamagedError(f"{path}: unreadable FAISS file ({str(e).splitlines()[0]}); "
                                "run `mgvr verify --repair`") from e
    if index.d != dim:
        raise IndexDamagedError(f"{path}: vectors have {index.d} dims, the index config says "
                                f"{dim}; run `mgvr verify --repair` or re-index")
    return index


def segment_items(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """All (N,) int64 ids and their (N, D) float32 vectors (decoded from SQ8 when quantised)."""
    if isinstance(index, faiss.IndexIDMap2):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        return ids, index.index.reconstruct_n(0, index.ntotal)
    ivf = faiss.extract_index_ivf(index)
    ids, vectors = [np.empty(0, np.int64)], [np.empty((0, ivf.d), np.float32)]
    for list_no in range(ivf.nlist):
        list_ids, list_vectors = inverted_list(ivf, list_no)
        ids.append(list_ids)
        vectors.append(list_vectors)
    return np.concatenate(ids), np.concatenate(vectors)


def segment_pieces(index: faiss.Index, path: Path, rows: int = PIECE_ROWS
                   ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(n,) int64 ids and (n, D) float32 vectors of a segment a piece at a time: a flat one
    `rows` at a time, an IVF one list by list. Lists that `load_segment(lists_on_disk=True)`
    left in the file are read from `path` with pread, so neither they nor mapped pages of them
    stay resident."""
    if isinstance(index, faiss.IndexIDMap2):
        ids = faiss.rev_swig_ptr(index.id_map.data(), index.ntotal)
        for start in range(0, index.ntotal, rows):
            count = min(rows, index.ntotal - start)
            yield (ids[start:start + count].astype(np.int64),
                   index.index.reconstruct_n(start, count))
        return
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    on_disk = faiss.downcast_InvertedLists(ivf.invlists)
    if not isinstance(on_disk, faiss.OnDiskInvertedLists):
        for list_no in range(ivf.nlist):
            yield inverted_list(ivf, list_no)
        return
    code_size = on_disk.code_size
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        for list_no in range(ivf.nlist):
            entry = on_disk.lists.at(list_no)
            if entry.size == 0:
                continue
            codes = _pread(f.fileno(), np.empty(entry.size * code_size, np.uint8),
                           entry.offset, path)
            list_ids = _pread(f.fileno(), np.empty(entry.size, np.int64),
                              entry.offset + entry.capacity * code_size, path)
            yield list_ids, _decode_list(ivf, codes, entry.size)


def _pread(fd: int, out: np.ndarray, offset: int, path: Path) -> np.ndarray:
    if out.nbytes and os.preadv(fd, [out.view(np.uint8)], offset) != out.nbytes:
        raise IndexDamagedError(f"{path}: ends inside an inverted list; run "
                                "`mgvr verify --repair`")
    return out


def inverted_list_ids(index: faiss.Index, list_no: int) -> np.ndarray:
    """The (n,) int64 ids of one inverted list of an IVF segment, without its codes."""
    invlists = faiss.extract_index_ivf(index).invlists
    size = invlists.list_size(list_no)
    if size == 0:
        return np.empty(0, np.int64)
    return faiss.rev_swig_ptr(invlists.get_ids(list_no), size).astype(np.int64)


def inverted_list(ivf: faiss.IndexIVF, list_no: int) -> tuple[np.ndarray, np.ndarray]:
    """One inverted list's (n,) ids and (n, D) float32 vectors."""
    ivf = faiss.downcast_index(ivf)
    invlists = ivf.invlists
    size = invlists.list_size(list_no)
    if size == 0:
        return np.empty(0, np.int64), np.empty((0, ivf.d), np.float32)
    list_ids = faiss.rev_swig_ptr(invlists.get_ids(list_no), size).astype(np.int64)
    codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * invlists.code_size).copy()
    return list_ids, _decode_list(ivf, codes, size)


def _decode_list(ivf: faiss.IndexIVF, codes: np.ndarray, size: int) -> np.ndarray:
    """(size, D) float32 vectors of one list's (size * code_size,) uint8 codes."""
    if isinstance(ivf, faiss.IndexIVFScalarQuantizer):  # coded directly, not as residuals
        return ivf.sq.decode(codes.reshape(size, -1))
    return codes.view(np.float32).reshape(size, ivf.d)
