"""Retrieval metrics against rankings worked out by hand."""

import math

import pytest
import torch

from mgvr.model.scoring import RerankWeights, coarse_to_fine_order, coarse_vectors, rerank_score
from mgvr.training.evaluate import EncodedSplit, evaluate_rankings, format_report, time_queries
from mgvr.training.metrics import (
    RECALL_AT,
    coarse_to_fine_ranks,
    recall_difference,
    recall_interval,
    summarize,
    target_ranks,
    video_to_text_ranks,
)


def test_target_ranks_by_hand_with_pessimistic_ties():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3],   # true 0: best -> 1
                           [0.9, 0.1, 0.5, 0.3],   # true 3: below 0.9 and 0.5 -> 3
                           [0.2, 0.2, 0.2, 0.2],   # all tied, true 1 -> worst, 4
                           [0.4, 0.7, 0.7, 0.1]])  # true 2 tied with 1 -> 3 (0.4 is below)
    targets = torch.tensor([0, 3, 1, 2])
    assert target_ranks(scores, targets).tolist() == [1, 3, 4, 2]


def test_summary_by_hand():
    summary = summarize(torch.tensor([1, 2, 6, 11]))
    assert summary.r1 == 25.0 and summary.r5 == 50.0 and summary.r10 == 75.0
    assert summary.median_rank == 4.0  # (2 + 6) / 2, as numpy.median
    assert summary.mean_rank == 5.0 and summary.count == 4
    odd = summarize(torch.tensor([3, 1, 2]))
    assert odd.median_rank == 2.0 and math.isclose(odd.r1, 100 / 3)


def test_coarse_to_fine_ranks_by_hand():
    # Coarse order 0,1,2,3,4. Depth 3 keeps {0,1,2}; by fine they go 2,1,0; then 3,4.
    coarse = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5]]).repeat(5, 1)
    fine = torch.tensor([[0.1, 0.5, 0.9, 0.2, 0.99]]).repeat(5, 1)
    targets = torch.arange(5)
    assert coarse_to_fine_ranks(coarse, fine, targets, 3).tolist() == [3, 2, 1, 4, 5]
    # Depth 1: only clip 0 is re-scored; everything keeps the coarse order.
    assert coarse_to_fine_ranks(coarse, fine, targets, 1).tolist() == [1, 2, 3, 4, 5]
    # Full depth is exhaustive fine ranking: 4 (0.99) first, then 2, 1, 3, 0.
    assert coarse_to_fine_ranks(coarse, fine, targets, 5).tolist() == [5, 3, 2, 4, 1]
    assert coarse_to_fine_ranks(coarse, fine, targets, 50).tolist() == \
        target_ranks(fine, targets).tolist()


def test_coarse_to_fine_order_by_hand():
    by_coarse = torch.tensor([[7, 3, 9, 1, 4]])
    # The first three re-scored: 9 (0.8) first, then 7 and 3 tie and keep their coarse order.
    assert coarse_to_fine_order(by_coarse, torch.tensor([[0.5, 0.5, 0.8]])).tolist() == \
        [[9, 7, 3, 1, 4]]
    assert coarse_to_fine_order(by_coarse, torch.empty(1, 0)).tolist() == by_coarse.tolist()


def test_coarse_to_fine_ranks_are_pessimistic_on_coarse_ties():
    # A model that scores every clip alike must not look good: the true clip ranks last.
    flat = torch.zeros(4, 4)
    assert coarse_to_fine_ranks(flat, flat, torch.arange(4), 2).tolist() == [4, 4, 4, 4]


def test_video_to_text_ranks_by_hand():
    # Queries 0 and 1 describe video 0; query 2 describes video 1.
    scores = torch.tensor([[0.2, 0.9],
                           [0.6, 0.1],
                           [0.5, 0.3]])
    targets = torch.tensor([0, 0, 1])
    # Video 0 ranks queries 1 (0.6), 2 (0.5), 0 (0.2): its own best is query 1 -> 1.
    # Video 1 ranks queries 0 (0.9), 2 (0.3), 1 (0.1): its own query 2 -> 2.
    assert video_to_text_ranks(scores, targets).tolist() == [1, 2]


def _split(n=30, f=6, d=16, seed=0) -> EncodedSplit:
    generator = torch.Generator().manual_seed(seed)
    frames = torch.nn.functional.normalize(torch.randn(n, f, d, generator=generator), dim=-1)
    mask = torch.ones(n, f, dtype=torch.bool)
    mask[::4, 4:] = False
    frames = frames * mask.unsqueeze(-1)
    # Each caption is a noisy copy of one frame of its clip: a brief-event-like query.
    targets = torch.arange(n)
    text = torch.nn.functional.normalize(
        frames[targets, 1] + 0.3 * torch.randn(n, d, generator=generator), dim=-1)
    return EncodedSplit(text, frames, frames, mask, coarse_vectors(frames, mask), targets,
                        tuple("brief" if i % 2 else "scene" for i in range(n)), None, None)


def test_evaluate_rankings_agree_with_scores_and_depths():
    split = _split()
    results = evaluate_rankings(split, depths=(1, 5, 30))
    fine, _ = rerank_score(split.text, split.coarse, split.frames, split.head_frames,
                           split.mask, RerankWeights())
    expected = summarize(target_ranks(fine, split.targets))
    assert results["fine"].text_to_video == expected
    assert results["coarse_to_fine@30"].text_to_video == expected  # depth = every clip
    assert results["coarse_to_fine@1"].text_to_video == results["coarse"].text_to_video
    assert results["coarse_to_fine@30"].video_to_text is None
    assert set(results["fine"].by_kind) == {"brief", "scene"}
    assert results["fine"].by_kind["brief"].count == 15
    # Text built from a single frame: the fine score finds it better than the mean vector.
    assert results["fine"].text_to_video.r1 > results["coarse"].text_to_video.r1


def test_time_queries_reports_every_method_and_replicates():
    split = _split()
    timings = time_queries(split, depths=(5,), queries=3)
    assert set(timings) == {"coarse", "fine", "coarse_to_fine@5"}
    assert all(value > 0 for value in timings.values())
    bigger = split.replicate(95)
    assert bigger.frames.shape[0] == 95 and torch.equal(bigger.frames[30], split.frames[0])
    assert len(time_queries(bigger, depths=(5,), queries=2)) == 3


def test_summary_of_nothing_is_nan():
    assert math.isnan(summarize(torch.tensor([], dtype=torch.int64)).r1)


@pytest.mark.parametrize("depth", [2, 7])
def test_coarse_to_fine_matches_a_naive_reordering(depth):
    generator = torch.Generator().manual_seed(depth)
    coarse, fine = torch.rand(6, 9, generator=generator), torch.rand(6, 9, generator=generator)
    targets = torch.randint(0, 9, (6,), generator=generator)
    got = coarse_to_fine_ranks(coarse, fine, targets, depth).tolist()
    for q in range(6):
        by_coarse = sorted(range(9), key=lambda i: -coarse[q, i].item())
        head = sorted(by_coarse[:depth], key=lambda i: -fine[q, i].item())
        order = head + by_coarse[depth:]
        assert got[q] == order.index(targets[q].item()) + 1


def _ranks(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 30, (count,), generator=torch.Generator().manual_seed(seed))


def test_recall_intervals_contain_the_estimate_and_narrow_with_more_queries():
    few, many = summarize(_ranks(40)), summarize(_ranks(1000))
    for summary in (few, many):
        for k in RECALL_AT:
            low, high = summary.intervals[f"r{k}"]
            assert low <= getattr(summary, f"r{k}") <= high and low < high
    width = {name: s.intervals["r5"][1] - s.intervals["r5"][0]
             for name, s in (("few", few), ("many", many))}
    # The width shrinks as 1 / sqrt(queries): 25x the queries, a fifth of the width.
    assert width["many"] < 0.35 * width["few"]


def test_recall_intervals_are_reproducible_and_follow_the_seed():
    ranks = _ranks(60)
    assert recall_interval(ranks, 5) == recall_interval(ranks, 5)
    assert summarize(ranks) == summarize(ranks.clone())
    assert recall_interval(ranks, 5, seed=1) != recall_interval(ranks, 5, seed=2)


def test_an_interval_of_constant_hits_has_no_width():
    assert recall_interval(torch.ones(20, dtype=torch.int64), 1) == (100.0, 100.0)
    assert recall_interval(torch.full((20,), 50), 10) == (0.0, 0.0)


def test_paired_difference_by_hand_and_against_noise():
    a = torch.tensor([1, 9, 9, 9, 2, 9, 9, 9, 9, 9])
    b = torch.tensor([1, 1, 1, 9, 9, 9, 9, 9, 9, 9])  # two queries won, one lost
    difference = recall_difference(a, b, 1)
    assert difference.difference == 20.0  # 3/10 - 1/10
    assert difference.low <= 20.0 <= difference.high
    same = recall_difference(a, a, 5)
    assert (same.difference, same.low, same.high) == (0.0, 0.0, 0.0)
    # A gain on every one of many queries is far outside noise; the paired interval shows it
    # although the two methods' own intervals would overlap on few queries.
    worse, better = torch.full((200,), 20), torch.cat([torch.full((20,), 1),
                                                       torch.full((180,), 20)])
    assert recall_difference(worse, better, 5).low > 5.0
    with pytest.raises(ValueError):
        recall_difference(a, a[:5], 1)


def test_the_report_prints_every_recall_with_its_interval():
    split = _split()
    results = evaluate_rankings(split, depths=(5,))
    report = {"queries": 30, "clips": 30, "frames": 6, "model": "m", "checkpoint": None,
              "pretrained": "p", "timing": [],
              "methods": {name: result.as_dict() for name, result in results.items()}}
    text = format_report(report)
    coarse = results["coarse"].text_to_video
    low, high = coarse.intervals["r5"]
    assert f"{coarse.r5:5.1f} [{low:4.1f},{high:5.1f}]" in text
    brief = results["coarse_to_fine@5"].gain_over_coarse["brief"]["r5"]
    assert f"{brief.difference:+5.1f} [{brief.low:+5.1f},{brief.high:+5.1f}]" in text
    # The header, then 3 groups x 3 methods x R@1/5/10, then 2 methods x 3 groups of gains.
    assert text.count("[") == 1 + 3 * 3 * 3 + 2 * 3 * 3
