"""Retrieval metrics: ranks of the true match, R@K, median and mean rank.

Ranks are 1-based and pessimistic on ties: a candidate scoring exactly as high as the true match
counts as ranked above it, so a model that scores everything alike gets the worst rank, never
the best.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

RECALL_AT = (1, 5, 10)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rank of each query's true item.  (Q, N) scores, (Q,) item index -> (Q,) int64 ranks."""
    true = scores.gather(1, targets.view(-1, 1))
    return (scores >= true).sum(dim=1)


def coarse_to_fine_ranks(coarse: torch.Tensor, fine: torch.Tensor, targets: torch.Tensor,
                         depth: int) -> torch.Tensor:
    """Ranks after two-stage retrieval, as the retriever orders hits: the `depth` items with the
    best coarse score, ordered by fine score, then all others in coarse order.
    (Q, N) coarse, (Q, N) fine, (Q,) -> (Q,) int64."""
    depth = min(depth, coarse.shape[1])
    candidates = torch.zeros_like(coarse, dtype=torch.bool)
    candidates.scatter_(1, coarse.topk(depth, dim=1).indices, True)
    in_candidates = candidates.gather(1, targets.view(-1, 1)).squeeze(1)
    true_fine = fine.gather(1, targets.view(-1, 1))
    true_coarse = coarse.gather(1, targets.view(-1, 1))
    fine_rank = ((fine >= true_fine) & candidates).sum(dim=1)
    coarse_rank = depth + ((coarse >= true_coarse) & ~candidates).sum(dim=1)
    return torch.where(in_candidates, fine_rank, coarse_rank)


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


@dataclass(frozen=True)
class RankSummary:
    r1: float  # percent
    r5: float
    r10: float
    median_rank: float
    mean_rank: float
    count: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(ranks: torch.Tensor) -> RankSummary:
    """(Q,) 1-based ranks -> R@1/5/10 in percent, median and mean rank."""
    if ranks.numel() == 0:
        nan = float("nan")
        return RankSummary(nan, nan, nan, nan, nan, 0)
    values = ranks.double()
    recall = [100.0 * float((values <= k).double().mean()) for k in RECALL_AT]
    # Median of an even count: the mean of the two middle ranks (as numpy.median).
    return RankSummary(*recall, float(values.quantile(0.5)), float(values.mean()),
                       int(ranks.numel()))
