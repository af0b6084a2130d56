"""Retrieval metrics: ranks of the true match, R@K with bootstrap intervals, median and mean
rank.

Ranks are 1-based and pessimistic on ties: a candidate scoring exactly as high as the true match
counts as ranked above it, so a model that scores everything alike gets the worst rank, never
the best. Intervals are 95 % percentile bootstraps over queries (queries drawn with
replacement, BOOTSTRAP_RESAMPLES times, from a fixed seed, so a report is reproducible); a
difference between two methods on the same queries is bootstrapped paired, which is what tells
a gain from noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mgvr.model.scoring import coarse_to_fine_order

RECALL_AT = (1, 5, 10)
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each query's true item.  (Q, N) scores, (Q,) item index -> (Q,) int64 ranks."""
    true = scores.gather(1, targets.view(-1, 1))
    return (scores >= true).sum(dim=1)


def coarse_to_fine_ranks(coarse: torch.Tensor, fine: torch.Tensor, targets: torch.Tensor,
                         depth: int) -> torch.Tensor:
    """Ranks after two-stage retrieval, ordered by the retriever's own rule
    (scoring.coarse_to_fine_order) over the coarse order of every item. Coarse ties rank the
    true item last (pessimistic, as target_ranks); fine ties keep the coarse order, as in
    search.  (Q, N) coarse, (Q, N) fine, (Q,) -> (Q,) int64."""
    depth = min(depth, coarse.shape[1])
    is_target = torch.zeros_like(coarse, dtype=torch.bool).scatter_(1, targets.view(-1, 1), True)
    target_last = is_target.to(torch.uint8).argsort(dim=1, stable=True)
    by_coarse = target_last.gather(1, coarse.gather(1, target_last).argsort(
        dim=1, descending=True, stable=True))
    order = coarse_to_fine_order(by_coarse, fine.gather(1, by_coarse[:, :depth]))
    return (order == targets.view(-1, 1)).to(torch.uint8).argmax(dim=1) + 1


def video_to_text_ranks(scores: torch.Tensor, targets: torch.Tensor,
                        chunk: int = 1024) -> torch.Tensor:
    """Video-to-text: each item ranks all queries; its rank is the best one among its own
    queries.  (Q, N) scores, (Q,) -> (M,) ranks of the M distinct items that have queries."""
    per_query = []
    for start in range(0, len(targets), chunk):
        own = targets[start:start + chunk]
        columns = scores[:, own]  # (Q, c): every query against each chunk query's item
        true = scores[torch.arange(start, start + len(own)), own]
        per_query.append((columns >= true).sum(dim=0))
    ranks = torch.cat(per_query)
    items, position = torch.unique(targets, return_inverse=True)
    best = torch.full((len(items),), torch.iinfo(torch.int64).max, dtype=torch.int64)
    return best.scatter_reduce(0, position, ranks, reduce="amin")


def _resampled_queries(count: int, resamples: int, seed: int) -> torch.Tensor:
    """(resamples, count) query indices drawn with replacement."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, count, (resamples, count), generator=generator)


def _percentiles(values: torch.Tensor, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=values.dtype))
    return float(low), float(high)


def recall_interval(ranks: torch.Tensor, k: int, resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Bootstrap interval of R@k in percent.  (Q,) ranks -> (low, high)."""
    hits = (ranks <= k).double()
    drawn = hits[_resampled_queries(len(hits), resamples, seed)].mean(dim=1)
    return _percentiles(100.0 * drawn, confidence)


@dataclass(frozen=True)
class RecallDifference:
    """R@k of method b minus method a on the same queries, in points, with a paired interval."""

    k: int
    difference: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def recall_difference(ranks_a: torch.Tensor, ranks_b: torch.Tensor, k: int,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                      confidence: float = CONFIDENCE) -> RecallDifference:
    """Paired bootstrap of R@k(b) - R@k(a): both methods see the same resampled queries.
    (Q,) ranks of a and of b for the same queries."""
    if ranks_a.shape != ranks_b.shape:
        raise ValueError("paired ranks must cover the same queries")
    change = (ranks_b <= k).double() - (ranks_a <= k).double()
    if change.numel() == 0:
        nan = float("nan")
        return RecallDifference(k, nan, nan, nan)
    drawn = change[_resampled_queries(len(change), resamples, seed)].mean(dim=1)
    low, high = _percentiles(100.0 * drawn, confidence)
    return RecallDifference(k, 100.0 * float(change.mean()), low, high)


@dataclass(frozen=True)
class RankSummary:
    r1: float  # percent
    r5: float
    r10: float
    median_rank: float
    mean_rank: float
    count: int
    # 95 % bootstrap interval (low, high) of each R@K, keyed "r1", "r5", "r10".
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(ranks: torch.Tensor) -> RankSummary:
    """(Q,) 1-based ranks -> R@1/5/10 in percent with bootstrap intervals, median and mean
    rank."""
    if ranks.numel() == 0:
        nan = float("nan")
        return RankSummary(nan, nan, nan, nan, nan, 0,
                           {f"r{k}": (nan, nan) for k in RECALL_AT})
    values = ranks.double()
    recall = [100.0 * float((values <= k).double().mean()) for k in RECALL_AT]
    intervals = {f"r{k}": recall_interval(ranks, k) for k in RECALL_AT}
    # Median of an even count: the mean of the two middle ranks (as numpy.median).
    return RankSummary(*recall, float(values.quantile(0.5)), float(values.mean()),
                       int(ranks.numel()), intervals)
