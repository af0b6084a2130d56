"""Retriever: text -> coarse recall -> fine rerank -> hits with path, time range and best moment."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mgvr.config import IndexConfig
from mgvr.errors import IncompatibleIndexError, IndexNotFoundError, UsageError
from mgvr.model.clip import ClipEncoder, load_for_index, pick_device
from mgvr.retriever.recall import CoarseSearcher
from mgvr.retriever.rerank import score_candidates, stack_rows
from mgvr.storage.catalog import Catalog
from mgvr.storage.coarse import CoarseIndex
from mgvr.storage.fine import FineReader
from mgvr.storage.layout import IndexLayout

DEFAULT_RERANK_DEPTH = 50
DEFAULT_LIMIT = 10


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # fine score when reranked, else the coarse score
    path: str
    start_s: float
    end_s: float
    best_moment_s: float  # time of the frame the TIB gate weighs most
    clip_id: int
    coarse_score: float
    reranked: bool


@dataclass(frozen=True)
class SearchResult:
    query: str
    hits: tuple[Hit, ...]
    query_truncated: bool
    timings_ms: dict[str, float] = field(default_factory=dict)


class Retriever:
    """Opens an index read-only; safe to use while `mgvr index` writes the same index."""

    def __init__(self, index_dir: Path, device: str | None = None, model: str | None = None,
                 pretrained: str | None = None) -> None:
        self.layout = IndexLayout(Path(index_dir))
        if not self.layout.exists():
            raise IndexNotFoundError(
                f"{self.layout.root}: no mgvr index here; build one with `mgvr index FOLDER` "
                "or point --index / $MGVR_INDEX at an existing index")
        self.config = IndexConfig.load(self.layout.root)
        built = self.config.model
        if model is not None and Path(model).stem != built.name and model != built.name:
            raise IncompatibleIndexError(
                f"{self.layout.root}: index built with {built.describe()}, not {model}; search it "
                "without --model, or index with that model into another --index")
        if pretrained is not None and pretrained != built.pretrained:
            raise IncompatibleIndexError(
                f"{self.layout.root}: index built with weights {built.pretrained}, not "
                f"{pretrained}; drop --pretrained or use the matching index")
        self.device = pick_device(device)
        self.catalog = Catalog(self.layout.catalog, readonly=True)
        self.fine = FineReader(self.layout.fine_dir, built.embed_dim)
        self._encoder: ClipEncoder | None = None
        self._generation = -1
        self._searcher: CoarseSearcher | None = None

    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            self._encoder = load_for_index(self.config.model, str(self.device))
        return self._encoder

    def _current_searcher(self) -> CoarseSearcher:
        generation = self.catalog.generation()
        if generation != self._generation or self._searcher is None:
            coarse = (CoarseIndex.load(self.layout.coarse(generation), self.config.model.embed_dim)
                      if generation else CoarseIndex.empty(self.config.model.embed_dim))
            self._searcher = CoarseSearcher(coarse, self.device)
            self._generation = generation
        return self._searcher

    def encode_query(self, text: str) -> tuple[torch.Tensor, bool]:
        vectors, truncated = self.encoder.encode_texts([text])
        return vectors[0], truncated[0]

    def search(self, text: str, limit: int = DEFAULT_LIMIT,
               rerank_depth: int = DEFAULT_RERANK_DEPTH, rerank: bool = True) -> SearchResult:
        if not text or not text.strip():
            raise UsageError("empty query; pass the text to search for, e.g. "
                             "mgvr search \"a man cooking\"")
        if limit <= 0:
            raise UsageError(f"--limit must be positive, not {limit}")
        if rerank_depth <= 0:
            raise UsageError(f"--rerank-depth must be positive, not {rerank_depth}")
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        query, truncated = self.encode_query(text)
        timings["text_encode"] = (time.perf_counter() - clock) * 1000
        hits = self.search_vector(query, limit, rerank_depth, rerank, timings)
        return SearchResult(text, tuple(hits), truncated, timings)

    def search_vector(self, query: torch.Tensor, limit: int, rerank_depth: int, rerank: bool,
                      timings: dict[str, float]) -> list[Hit]:
        """Both stages for an encoded (D,) query; fills `timings` (ms) per stage."""
        clock = time.perf_counter()
        searcher = self._current_searcher()
        depth = rerank_depth if rerank else 0
        coarse_scores, clip_ids = searcher.search(query.numpy()[None, :], max(depth, limit))
        coarse_scores, clip_ids = coarse_scores[0], clip_ids[0]
        keep = clip_ids >= 0  # FAISS pads with -1 when fewer vectors than k
        coarse_scores, clip_ids = coarse_scores[keep], clip_ids[keep]
        timings["recall"] = (time.perf_counter() - clock) * 1000
        if len(clip_ids) == 0:
            return []

        clock = time.perf_counter()
        # Reranked candidates first by fine score; the rest keep their coarse order below them.
        fine_ids = clip_ids[:depth] if rerank else clip_ids[:limit]
        shown = list(clip_ids[:max(depth, limit)] if rerank else clip_ids[:limit])
        records = self.catalog.clips_by_ids(int(i) for i in shown)
        fine_ids = np.array([i for i in fine_ids if int(i) in records], np.int64)
        rows = self.fine.read([(records[int(i)].part, records[int(i)].row) for i in fine_ids])
        timings["fetch"] = (time.perf_counter() - clock) * 1000

        clock = time.perf_counter()
        fine_scores, moments = np.empty(0), np.empty(0)
        if len(rows):
            fine_scores, moments = score_candidates(query, stack_rows(rows, self.device))
        timings["rerank"] = (time.perf_counter() - clock) * 1000

        coarse_of = {int(i): float(s) for i, s in zip(clip_ids, coarse_scores, strict=True)}
        moment_of = {int(i): float(m) for i, m in zip(fine_ids, moments, strict=True)}
        if rerank:
            order = [int(fine_ids[i]) for i in np.argsort(-fine_scores, kind="stable")]
            score_of = {int(i): float(s) for i, s in zip(fine_ids, fine_scores, strict=True)}
            order += [int(i) for i in shown if int(i) in records and int(i) not in score_of]
        else:
            order = [int(i) for i in shown if int(i) in records]
            score_of = coarse_of
        hits = []
        for rank, clip_id in enumerate(order[:limit], start=1):
            record = records[clip_id]
            hits.append(Hit(rank, score_of.get(clip_id, coarse_of[clip_id]), record.video_path,
                            record.start_s, record.end_s,
                            moment_of.get(clip_id, (record.start_s + record.end_s) / 2),
                            clip_id, coarse_of[clip_id], clip_id in moment_of and rerank))
        return hits

    def close(self) -> None:
        self.catalog.close()
