"""Evaluation through an index: every query runs mgvr.retriever's search, the code users run.

`mgvr index` builds the index (its decoding, encoding, head and storage); each caption is then
encoded by the retriever's encoder and searched with `Retriever.search_vector`, asking for
every clip of the index so the true video's rank is known however far down it is:
    coarse              rerank off: the coarse recall's order
    fine                rerank depth = every clip: exhaustive fine scoring
    coarse_to_fine@k    rerank depth k: the k best by coarse reordered by the fine score
A query's rank is the position of the first hit from its video. Index clips of videos the
captions do not name stay in the gallery as distractors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgvr.errors import UsageError
from mgvr.model.scoring import RerankWeights
from mgvr.retriever import Retriever
from mgvr.retriever.search import DEFAULT_LIMIT
from mgvr.training.datasets import CaptionedVideos
from mgvr.training.evaluate import EVAL_SCHEMA, MethodResult, method_results

TEXT_BATCH = 256
TIMING_QUERIES = 50


@dataclass(frozen=True)
class IndexedQueries:
    """Captions of a dataset, encoded for an index, with the index's clips of their videos."""

    text: torch.Tensor  # (Q, D)
    targets: tuple[int, ...]  # (Q,) dataset video of each caption
    kinds: tuple[str | None, ...]  # (Q,)
    clip_video: dict[int, int]  # clip id -> dataset video, for the captioned videos' clips
    clips: int  # clips in the index (the gallery)

    def subset(self, rows: Sequence[int]) -> IndexedQueries:
        rows = list(rows)
        return IndexedQueries(self.text[rows], tuple(self.targets[i] for i in rows),
                              tuple(self.kinds[i] for i in rows), self.clip_video, self.clips)


def index_queries(retriever: Retriever, dataset: CaptionedVideos) -> IndexedQueries:
    """Encode the captions with the index's model and find the clips of each video."""
    catalog = retriever.catalog
    clip_video: dict[int, int] = {}
    missing = []
    for number, video in enumerate(dataset.videos):
        ids = catalog.clip_ids_of(str(Path(video).resolve()))
        if not ids:
            missing.append(video)
        clip_video.update({clip_id: number for clip_id in ids or ()})
    if missing:
        raise UsageError(f"{retriever.layout.root}: {len(missing)} of the {len(dataset.videos)} "
                         f"captioned videos have no clips in this index (first: {missing[0]}); "
                         "index them with `mgvr index` first")
    encoder = retriever.encoder
    text = torch.cat([encoder.encode_texts(list(dataset.captions[i:i + TEXT_BATCH]))[0]
                      for i in range(0, len(dataset.captions), TEXT_BATCH)])
    return IndexedQueries(text.float().cpu(), dataset.caption_video, dataset.caption_kind,
                          clip_video, int(catalog.counts()["clips"]))


def _first_rank(clip_ids: Sequence[int], clip_video: dict[int, int], target: int) -> int:
    for rank, clip_id in enumerate(clip_ids, start=1):
        if clip_video.get(clip_id) == target:
            return rank
    return len(clip_ids) + 1  # not returned at all (e.g. its clips were removed meanwhile)


def method_ranks(retriever: Retriever, queries: IndexedQueries, depth: int | None,
                 weights: RerankWeights | None = None, limit: int | None = None
                 ) -> torch.Tensor:
    """(Q,) ranks of the true videos under one method (depth None: coarse only).
    `limit` caps the hits asked for (default: every clip, so every rank is exact); a true
    video beyond it gets rank limit + 1."""
    limit = limit or queries.clips
    ranks = []
    for text, target in zip(queries.text, queries.targets, strict=True):
        hits = retriever.search_vector(text, limit, depth or 1, depth is not None, {},
                                       weights=weights)
        ranks.append(_first_rank([hit.clip_id for hit in hits], queries.clip_video, target))
    return torch.tensor(ranks, dtype=torch.int64)


def method_milliseconds(retriever: Retriever, queries: IndexedQueries, depth: int | None,
                        weights: RerankWeights | None = None,
                        timing_queries: int = TIMING_QUERIES) -> float:
    """Median milliseconds of the search stages (recall, fetch, rerank) of a search for the
    top DEFAULT_LIMIT hits, as `mgvr search` asks, over the first `timing_queries` queries."""
    stage_ms = []
    for text in queries.text[:timing_queries]:
        timings: dict[str, float] = {}
        retriever.search_vector(text, DEFAULT_LIMIT, depth or 1, depth is not None, timings,
                                weights=weights)
        stage_ms.append(sum(timings.get(stage, 0.0) for stage in ("recall", "fetch", "rerank")))
    return float(np.median(stage_ms))


def evaluate_index(retriever: Retriever, queries: IndexedQueries, depths: Sequence[int],
                   weights: RerankWeights | None = None
                   ) -> tuple[dict[str, MethodResult], dict[str, float]]:
    """Every method's results and median stage milliseconds per query, through the index."""
    plans: dict[str, int | None] = {"coarse": None, "fine": queries.clips}
    plans.update({f"coarse_to_fine@{depth}": depth for depth in depths})
    ranks, timing = {}, {}
    for name, depth in plans.items():
        ranks[name] = method_ranks(retriever, queries, depth, weights)
        timing[name] = method_milliseconds(retriever, queries, depth, weights)
    return method_results(ranks, queries.kinds), timing


def index_report(retriever: Retriever, dataset: CaptionedVideos, queries: IndexedQueries,
                 depths: Sequence[int], weights: RerankWeights | None = None
                 ) -> dict[str, Any]:
    """The eval report (schema mgvr.eval/1) of `dataset`'s captions searched in an index."""
    results, timing = evaluate_index(retriever, queries, depths, weights)
    config = retriever.config
    return {"schema": EVAL_SCHEMA, "data": dataset.source, "index": str(retriever.layout.root),
            "checkpoint": config.head_source, "model": config.model.name,
            "pretrained": config.model.pretrained, "clips": queries.clips,
            "queries": len(queries.targets), "frames": config.frames_per_clip,
            "skipped_videos": 0, "rerank_weights": asdict(weights or retriever.weights),
            "methods": {name: result.as_dict() for name, result in results.items()},
            "timing": [{"clips": queries.clips, "queries": min(TIMING_QUERIES,
                                                               len(queries.targets)),
                        "limit": DEFAULT_LIMIT, "ms_per_query": timing}]}
