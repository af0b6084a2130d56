"""Retriever: a query (text, image, or a clip's frame) -> coarse recall -> fine rerank -> hits
with path, time range and best moment.

Safe to share between threads (a server answers queries concurrently): each thread reads the
catalog through its own read-only SQLite connection, and the searchable state of a generation
(its loaded segments, tombstones, catalog rows) is an immutable snapshot swapped whole when a
commit lands, so a query never sees half of one generation and half of the next.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import faiss
import numpy as np
import torch

from mgvr.config import IndexConfig
from mgvr.errors import IndexDamagedError, MgvrError, UsageError
from mgvr.model.clip import ClipEncoder, load_for_index, pick_device
from mgvr.model.head import EercfHead, load_head_for_index
from mgvr.model.scoring import RerankWeights, coarse_to_fine_order
from mgvr.retriever.filters import SearchFilter
from mgvr.retriever.images import ImageSource, image_name, read_image
from mgvr.retriever.recall import CoarseSearcher, GpuPlacements, LoadedSegment
from mgvr.retriever.rerank import batch_candidates, index_weights, score_candidates
from mgvr.retriever.results import Hit, SearchResult
from mgvr.storage.catalog import Catalog, ClipRecord
from mgvr.storage.coarse import load_segment
from mgvr.storage.fine import FineReader
from mgvr.storage.layout import IndexLayout

DEFAULT_RERANK_DEPTH = 50
DEFAULT_LIMIT = 10
CLIP_RECORD_CACHE = 200_000  # ~60 MB of catalog rows at most
READ_ATTEMPTS = 3
T = TypeVar("T")


def sprite_tile_pixels(sprite: bytes) -> int:
    """A sprite's tile size: its height (tiles are square), read from the image header."""
    from PIL import Image

    with Image.open(io.BytesIO(sprite)) as image:
        return image.height


class FineRowMismatch(MgvrError):
    """A fine row holds another clip than the catalog says (a compaction raced the read)."""


@dataclass
class _Generation:
    """What one committed generation searches: its segments and the catalog rows read so far
    (clip ids are never reused, but a commit may move a clip's row or rename its file)."""

    number: int
    searcher: CoarseSearcher
    records: dict[int, ClipRecord] = field(default_factory=dict)


class Retriever:
    """Opens an index read-only; safe to use while `mgvr index` writes the same index."""

    def __init__(self, index_dir: Path, device: str | None = None, model: str | None = None,
                 pretrained: str | None = None) -> None:
        self.layout = IndexLayout(Path(index_dir)).require()
        self.config = IndexConfig.load(self.layout.root)
        self.config.model.check_request(self.layout.root, model, pretrained)
        self._resolved = self.config.resolved(self.layout.root)
        self.weights = index_weights(self.config, self.layout.root)  # the rerank mix
        self.device = pick_device(device)
        self._local = threading.local()
        self._catalog()  # fails here, not at the first query, if the catalog is damaged
        self.fine = FineReader(self.layout.fine_dir, self.config.model.embed_dim)
        self._lock = threading.Lock()  # loading the model, the head, a new generation
        self._encoder: ClipEncoder | None = None
        self._head: EercfHead | None = None
        self._segments: dict[str, faiss.Index] = {}  # loaded segment files, by name
        self._gpu = GpuPlacements()  # their copies on the GPU, on a CUDA device
        self._current: _Generation | None = None

    def _catalog(self) -> Catalog:
        catalog = getattr(self._local, "catalog", None)
        if catalog is None:
            catalog = self._local.catalog = self.layout.open_catalog()
        return catalog

    @property
    def catalog(self) -> Catalog:
        """The calling thread's read-only connection to the catalog."""
        return self._catalog()

    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            with self._lock:
                if self._encoder is None:
                    self._encoder = load_for_index(self._resolved.model, str(self.device))
        return self._encoder

    @property
    def head(self) -> EercfHead | None:
        """The trained EERCF head the index was built with, if any."""
        if self._head is None and self._resolved.head_checkpoint:
            with self._lock:
                if self._head is None:
                    self._head = load_head_for_index(self._resolved.head_checkpoint,
                                                     self.config.head_sha256, self.device)
        return self._head

    # generations ----------------------------------------------------------------------------
    def _generation(self) -> _Generation:
        number = self._catalog().generation()
        current = self._current
        if current is not None and current.number == number:
            return current
        with self._lock:
            if self._current is None or self._current.number != number:
                self._current = self._load_generation()
            return self._current

    def _load_generation(self) -> _Generation:
        """Load the catalog's current generation; if a writer committed twice meanwhile and
        deleted a segment file this one names, take the newer generation instead."""
        catalog = self._catalog()
        dim = self.config.model.embed_dim
        for attempt in range(READ_ATTEMPTS):
            with catalog.snapshot():
                number = catalog.generation()
                records = catalog.segments()
                dead = {s.name: np.array(catalog.tombstones(s.name), np.int64)
                        for s in records}
                id_limit = catalog.next_clip_id()
                sums = catalog.files()
                parts = list(catalog.parts())
            try:
                loaded = []
                for record in records:
                    if record.name not in self._segments:
                        path = self.layout.segment(record.name)
                        checksum = sums.get(self.layout.relative(path), (0, None))[1]
                        self._segments[record.name] = load_segment(path, dim, checksum)
                    loaded.append(LoadedSegment(record, self._segments[record.name],
                                                dead[record.name]))
            except IndexDamagedError:
                if attempt == READ_ATTEMPTS - 1 or catalog.generation() == number:
                    raise
                continue
            names = {r.name for r in records}
            self._segments = {n: i for n, i in self._segments.items() if n in names}
            self.fine.keep_only({part: sums.get(self.layout.relative(sidecar), (0, ""))[1]
                                 for part in parts
                                 for sidecar in self.layout.part_files(part)[1:]})
            return _Generation(number, CoarseSearcher(loaded, id_limit, self.device, self._gpu))
        raise AssertionError("unreachable")

    def prefetch(self) -> None:
        """Read the catalog file once so it sits in the page cache (a long-running server does
        this at start): otherwise its first queries wait on random SQLite page reads. Measured
        at 1M clips after a 30 GB write: lookups of 50 clips p50 2.3 ms; after reading the 63 MB
        file (0.05 s), 0.22 ms. (posix_fadvise WILLNEED did not bring it in.)"""
        buffer = bytearray(1 << 20)
        try:
            with open(self.layout.catalog, "rb", buffering=0) as f:
                while f.readinto(buffer):
                    pass
        except OSError:
            pass

    def _clip_records(self, generation: _Generation, clip_ids: list[int]
                      ) -> dict[int, ClipRecord]:
        """Catalog rows of these clips (those still in the catalog), cached per generation."""
        cache = generation.records  # shared by threads: only get, update and clear
        fetched: dict[int, ClipRecord] = {}
        missing = [i for i in clip_ids if i not in cache]
        if missing:
            fetched = self._catalog().clips_by_ids(missing)
            if len(cache) + len(fetched) > CLIP_RECORD_CACHE:
                cache.clear()
            cache.update(fetched)
        return {i: r for i in clip_ids if (r := cache.get(i) or fetched.get(i)) is not None}

    def thumbnail_sprite(self, clip_id: int) -> tuple[bytes, int, int] | None:
        """(WebP image, tile pixels, frames) of a clip's stored frame sprite: its frames
        side by side, square tiles in sample order; None for an unknown clip or an index
        without thumbnails."""
        def read(generation: _Generation) -> tuple[bytes, int] | None:
            record = self._clip_records(generation, [clip_id]).get(clip_id)
            if record is None:
                return None
            return self.fine.read_thumbnails(record.part, record.row), record.n_frames

        found = self._on_current_rows(read)
        if found is None or not found[0]:
            return None
        return found[0], sprite_tile_pixels(found[0]), found[1]

    def status(self) -> dict[str, object]:
        """What a long-running server reports: index, generation, segments, device."""
        generation = self._generation()
        return {"index": str(self.layout.root), "generation": generation.number,
                "model": self.config.model.describe(), "device": str(self.device),
                "coarse": {"clips": len(generation.searcher),
                           "segments": generation.searcher.describe()},
                "catalog": self._catalog().counts()}

    def encode_query(self, text: str) -> tuple[torch.Tensor, bool]:
        vectors, truncated = self.encoder.encode_texts([text])
        return vectors[0], truncated[0]

    def allowed_ids(self, search_filter: SearchFilter | None) -> np.ndarray | None:
        """Sorted ids of the clips a filter allows; None when there is no filter."""
        if not search_filter:
            return None
        return np.asarray(self._catalog().clip_ids_matching(**search_filter.catalog_arguments()),
                          np.int64)

    def search(self, text: str, limit: int = DEFAULT_LIMIT,
               rerank_depth: int = DEFAULT_RERANK_DEPTH, rerank: bool = True,
               search_filter: SearchFilter | None = None) -> SearchResult:
        if not text or not text.strip():
            raise UsageError("empty query; pass the text to search for, e.g. "
                             "mgvr search \"a man cooking\"")
        _check_counts(limit, rerank_depth)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        query, truncated = self.encode_query(text)
        timings["text_encode"] = (time.perf_counter() - clock) * 1000
        return self._result(text, "text", query, limit, rerank_depth, rerank, search_filter,
                            timings, truncated)

    def search_image(self, image: ImageSource, limit: int = DEFAULT_LIMIT,
                     rerank_depth: int = DEFAULT_RERANK_DEPTH, rerank: bool = True,
                     search_filter: SearchFilter | None = None) -> SearchResult:
        """Query by example: an image file (path or bytes) or an (H, W, 3) uint8 RGB array,
        encoded with CLIP's image tower after the same resize and crop as indexed frames; its
        vector takes the text vector's place in both stages."""
        _check_counts(limit, rerank_depth)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        pixels = read_image(image)
        query = self.encoder.encode_images([pixels])[0]
        timings["image_encode"] = (time.perf_counter() - clock) * 1000
        return self._result(image_name(image), "image", query, limit, rerank_depth, rerank,
                            search_filter, timings)

    def search_like(self, clip_id: int, moment_s: float | None = None,
                    limit: int = DEFAULT_LIMIT, rerank_depth: int = DEFAULT_RERANK_DEPTH,
                    rerank: bool = True,
                    search_filter: SearchFilter | None = None) -> SearchResult:
        """"More like this": the clip's stored feature of its frame nearest `moment_s` (the
        middle frame when None) is CLIP's image embedding of that frame, so it is searched
        as an image query without decoding or encoding anything."""
        _check_counts(limit, rerank_depth)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        def read(generation: _Generation):
            record = self._clip_records(generation, [clip_id]).get(clip_id)
            return None if record is None else self.fine.read_batch([(record.part, record.row)])

        row = self._on_current_rows(read)
        if row is None:
            raise UsageError(f"clip {clip_id} is not in the index (its video was removed or "
                             "re-indexed); search again and pick a current result")
        count = int(row.n_frames[0])
        times = row.frame_times[0, :count]
        frame = count // 2 if moment_s is None else int(np.abs(times - moment_s).argmin())
        query = torch.nn.functional.normalize(
            torch.from_numpy(row.features[0, frame].astype(np.float32)), dim=0)
        timings["frame_fetch"] = (time.perf_counter() - clock) * 1000
        return self._result(f"clip {clip_id} at {float(times[frame]):.1f}s", "clip", query,
                            limit, rerank_depth, rerank, search_filter, timings)

    def _result(self, query_text: str, kind: str, query: torch.Tensor, limit: int,
                rerank_depth: int, rerank: bool, search_filter: SearchFilter | None,
                timings: dict[str, float], truncated: bool = False) -> SearchResult:
        clock = time.perf_counter()
        allowed = self.allowed_ids(search_filter)
        if allowed is not None:
            timings["filter"] = (time.perf_counter() - clock) * 1000
        hits = self.search_vector(query, limit, rerank_depth, rerank, timings, allowed)
        return SearchResult(query_text, tuple(hits), truncated, timings, kind,
                            search_filter.to_json() if search_filter else {})

    def search_vector(self, query: torch.Tensor, limit: int, rerank_depth: int, rerank: bool,
                      timings: dict[str, float], allowed_ids: np.ndarray | None = None,
                      weights: RerankWeights | None = None) -> list[Hit]:
        """Both stages for an encoded (D,) query; fills `timings` (ms) per stage.
        `allowed_ids` (sorted int64), when given, is the only clips the search may return.
        `weights` replaces the index's rerank mix (evaluation and calibration try others).

        A concurrent `mgvr compact` may delete a part between the catalog lookup and the
        read; the search then starts over on the catalog's new generation."""
        return self._on_current_rows(lambda generation: self._search_vector(
            generation, query, limit, rerank_depth, rerank, timings, allowed_ids,
            weights or self.weights))

    def _on_current_rows(self, read: Callable[[_Generation], T]) -> T:
        """read(generation) on the current generation; if a compaction moved the rows it
        looked up (their part deleted, or another clip at the row), again on a fresh one."""
        for attempt in range(READ_ATTEMPTS):
            generation = self._generation()
            try:
                return read(generation)
            except (OSError, FineRowMismatch):
                if attempt == READ_ATTEMPTS - 1:
                    raise
                generation.records.clear()  # rows moved under us: read them again
        raise AssertionError("unreachable")

    def _search_vector(self, generation: _Generation, query: torch.Tensor, limit: int,
                       rerank_depth: int, rerank: bool, timings: dict[str, float],
                       allowed_ids: np.ndarray | None, weights: RerankWeights) -> list[Hit]:
        clock = time.perf_counter()
        searcher = generation.searcher
        depth = rerank_depth if rerank else 0
        # S_c = t . (W_g v) = (t W_g) . v: the index keeps v, the query carries W_g.
        recall_query = query if self.head is None else (
            query.to(self.head.w_g.device) @ self.head.w_g).detach().cpu()
        coarse_scores, clip_ids = searcher.search(recall_query.numpy()[None, :],
                                                  max(depth, limit), allowed_ids)
        coarse_scores, clip_ids = coarse_scores[0], clip_ids[0]
        keep = clip_ids >= 0  # FAISS pads with -1 when fewer vectors than k
        coarse_scores, clip_ids = coarse_scores[keep], clip_ids[keep]
        timings["recall"] = (time.perf_counter() - clock) * 1000
        if len(clip_ids) == 0:
            return []

        clock = time.perf_counter()
        records = self._clip_records(generation, [int(i) for i in clip_ids])
        present = np.array([int(i) in records for i in clip_ids], dtype=bool)
        coarse_scores, clip_ids = coarse_scores[present], clip_ids[present]  # coarse order
        # Without rerank the first hits are still scored, for their best moment and gate.
        fine_ids = clip_ids[:depth] if rerank else clip_ids[:limit]
        batch = self.fine.read_batch([(records[int(i)].part, records[int(i)].row)
                                      for i in fine_ids])
        if not np.array_equal(batch.clip_ids, fine_ids):
            raise FineRowMismatch(
                f"{self.layout.fine_dir}: fine rows do not hold the clips the catalog places "
                "there; run `mgvr verify --repair` or re-index")
        timings["fetch"] = (time.perf_counter() - clock) * 1000

        clock = time.perf_counter()
        fine_scores, moments, gates = np.empty(0), np.empty(0), np.empty((0, 0))
        if len(fine_ids):
            fine_scores, moments, gates = score_candidates(
                query, batch_candidates(batch, self.device), weights, self.head)
        timings["rerank"] = (time.perf_counter() - clock) * 1000

        ranking_scores = fine_scores if rerank else np.empty(0)
        order = coarse_to_fine_order(torch.from_numpy(clip_ids)[None],
                                     torch.from_numpy(ranking_scores)[None])[0].tolist()
        coarse_of = {int(i): float(s) for i, s in zip(clip_ids, coarse_scores, strict=True)}
        score_of = coarse_of | ({int(i): float(s) for i, s in zip(fine_ids, fine_scores,
                                                                  strict=True)}
                                if rerank else {})
        moment_of = {int(i): float(m) for i, m in zip(fine_ids, moments, strict=True)}
        frames_of = {int(i): _frame_strip(batch.frame_times[n], gates[n], batch.n_frames[n])
                     for n, i in enumerate(fine_ids)}
        hits = []
        for rank, clip_id in enumerate(order[:limit], start=1):
            record = records[clip_id]
            best_frame, frame_times, frame_weights = frames_of.get(
                clip_id, (record.n_frames // 2, (), ()))
            hits.append(Hit(rank, score_of[clip_id], record.video_path,
                            record.start_s, record.end_s,
                            moment_of.get(clip_id, (record.start_s + record.end_s) / 2),
                            clip_id, coarse_of[clip_id], clip_id in moment_of and rerank,
                            best_frame, frame_times, frame_weights))
        return hits

    def close(self) -> None:
        self._catalog().close()
        self._local.catalog = None


def _check_counts(limit: int, rerank_depth: int) -> None:
    if limit <= 0:
        raise UsageError(f"--limit must be positive, not {limit}")
    if rerank_depth <= 0:
        raise UsageError(f"--rerank-depth must be positive, not {rerank_depth}")


def _frame_strip(times: np.ndarray, gate: np.ndarray,
                 count: int) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(best frame, frame times, gate weights) of one reranked clip, for the hit."""
    return (int(gate[:count].argmax()), tuple(round(float(t), 3) for t in times[:count]),
            tuple(round(float(w), 4) for w in gate[:count]))
