"""`mgvr eval --calibrate`: fit the rerank mix (weights and temperatures) to the model in use.

The paper's 0.5 S_c + 0.8 S_fw + 0.2 S_fs and its temperatures (0.01 in S_fw, 0.1 in the TIB
gate) were tuned for a fine-tuned ViT-B/32; another model may rank better with another mix.
The captions are split, per kind, into a calibration half and a held-out half (seeded). On the
calibration half a small grid search picks the mix with the best objective (the mean of R@1,
R@5 and R@10 of coarse-to-fine at the rerank depth): first the three weights with the paper's
temperatures, then the temperatures with the best weights. The paper's mix is the first
candidate and only a strictly better one replaces it, so the chosen mix is never worse than
the paper's on the calibration half. The held-out half then says whether the gain is real:
both mixes' R@K there with a paired bootstrap interval of the difference.

Every candidate is scored by `Retriever.search_vector`, the search users run. The only scale
of a mix that matters is its direction (the rerank orders by S), so candidates that are
multiples of each other are tried once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgvr.config import IndexConfig
from mgvr.model.scoring import RerankWeights
from mgvr.retriever import Retriever
from mgvr.storage.layout import IndexLayout
from mgvr.storage.lock import WriterLock
from mgvr.training.metrics import RECALL_AT, recall_difference, summarize
from mgvr.training.through_index import IndexedQueries, method_ranks

COARSE_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
FRAME_WEAK_WEIGHTS = (0.0, 0.4, 0.8, 1.6)
FRAME_STRONG_WEIGHTS = (0.0, 0.2, 0.4, 0.8)
FRAME_WEAK_TEMPERATURES = (0.003, 0.01, 0.03, 0.1)
TIB_TEMPERATURES = (0.03, 0.1, 0.3, 1.0)
CALIBRATION_SHARE = 0.5


def split_queries(kinds: Sequence[str | None], share: float = CALIBRATION_SHARE,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """(calibration rows, held-out rows): each kind's captions shuffled and cut at `share`."""
    rng = np.random.default_rng(seed)
    calibration, held_out = [], []
    for kind in sorted({k or "" for k in kinds}):
        rows = [i for i, k in enumerate(kinds) if (k or "") == kind]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        cut = int(round(len(rows) * share))
        calibration += rows[:cut]
        held_out += rows[cut:]
    return sorted(calibration), sorted(held_out)


def objective(ranks: torch.Tensor) -> float:
    """Mean of R@1, R@5 and R@10 in percent: what the calibration maximises."""
    return float(np.mean([100.0 * float((ranks <= k).double().mean()) for k in RECALL_AT]))


def mix_candidates() -> list[RerankWeights]:
    """The paper's mix first, then every grid mix of another direction."""
    paper = RerankWeights()
    seen = {_direction(paper)}
    candidates = [paper]
    for coarse, weak, strong in itertools.product(COARSE_WEIGHTS, FRAME_WEAK_WEIGHTS,
                                                  FRAME_STRONG_WEIGHTS):
        weights = RerankWeights(coarse, weak, strong)
        if coarse + weak + strong > 0 and _direction(weights) not in seen:
            seen.add(_direction(weights))
            candidates.append(weights)
    return candidates


def temperature_candidates(mix: RerankWeights) -> list[RerankWeights]:
    """`mix` first, then its weights with every other pair of temperatures."""
    others = [replace(mix, frame_weak_temperature=weak, tib_temperature=tib)
              for weak, tib in itertools.product(FRAME_WEAK_TEMPERATURES, TIB_TEMPERATURES)]
    return [mix] + [w for w in others if w != mix]


def _direction(weights: RerankWeights) -> tuple[float, float, float]:
    total = weights.coarse + weights.frame_weak + weights.frame_strong
    return tuple(round(w / total, 6) for w in (weights.coarse, weights.frame_weak,
                                               weights.frame_strong))


def _compare(paper: torch.Tensor, chosen: torch.Tensor) -> dict[str, Any]:
    return {"paper": summarize(paper).as_dict(), "chosen": summarize(chosen).as_dict(),
            "gain": {f"r{k}": recall_difference(paper, chosen, k).as_dict() for k in RECALL_AT}}


@dataclass(frozen=True)
class Calibration:
    paper: RerankWeights
    chosen: RerankWeights
    depth: int
    calibration_queries: int
    paper_objective: float  # on the calibration split
    chosen_objective: float
    candidates: int
    # On the held-out split: R@K of both mixes, the paired difference, and the same per kind;
    # None when every query went to calibration.
    held_out: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        return {"objective": "mean of R@1, R@5, R@10 of coarse_to_fine at the depth",
                "depth": self.depth, "paper": asdict(self.paper), "chosen": asdict(self.chosen),
                "calibration_queries": self.calibration_queries,
                "paper_objective": self.paper_objective,
                "chosen_objective": self.chosen_objective, "candidates": self.candidates,
                "held_out": self.held_out}


def best_weights(retriever: Retriever, queries: IndexedQueries, depth: int
                 ) -> tuple[RerankWeights, float, float, int]:
    """(chosen mix, paper's objective, chosen objective, candidates tried) on `queries`."""
    limit = max(depth, max(RECALL_AT))  # exact ranks up to R@10 are all the objective needs

    def score(weights: RerankWeights) -> float:
        return objective(method_ranks(retriever, queries, depth, weights, limit))

    tried = 0

    def best_of(candidates: list[RerankWeights]) -> tuple[RerankWeights, float]:
        nonlocal tried
        best, best_score = candidates[0], score(candidates[0])
        for weights in candidates[1:]:
            value = score(weights)
            if value > best_score:
                best, best_score = weights, value
        tried += len(candidates)
        return best, best_score

    mixes = mix_candidates()
    paper_score = score(mixes[0])
    mix, _ = best_of(mixes)
    chosen, chosen_score = best_of(temperature_candidates(mix))
    return chosen, paper_score, chosen_score, tried


def calibrate(retriever: Retriever, queries: IndexedQueries, depth: int,
              share: float = CALIBRATION_SHARE, seed: int = 0) -> Calibration:
    """Pick the mix on the calibration split; measure it against the paper's on the rest."""
    calibration_rows, held_rows = split_queries(queries.kinds, share, seed)
    calibration_queries = queries.subset(calibration_rows)
    paper = RerankWeights()
    chosen, paper_score, chosen_score, tried = best_weights(retriever, calibration_queries,
                                                            depth)
    held_out = None
    if held_rows:
        held = queries.subset(held_rows)
        paper_ranks = method_ranks(retriever, held, depth, paper)
        chosen_ranks = method_ranks(retriever, held, depth, chosen)
        by_kind = {}
        for kind in sorted({k for k in held.kinds if k}):
            keep = torch.tensor([k == kind for k in held.kinds])
            by_kind[kind] = _compare(paper_ranks[keep], chosen_ranks[keep])
        held_out = {**_compare(paper_ranks, chosen_ranks), "by_kind": by_kind}
    return Calibration(paper, chosen, depth, len(calibration_rows), paper_score, chosen_score,
                       tried, held_out)


def write_weights(index_dir: Path, weights: RerankWeights, wait_s: float = 0.0) -> Path:
    """Store `weights` as the index's rerank mix (mgvr.json "rerank"), under the writer lock."""
    layout = IndexLayout(Path(index_dir)).require()
    with WriterLock(layout.lock, wait_s, "eval --calibrate --write"):
        config = IndexConfig.load(layout.root)
        replace(config, rerank=asdict(weights)).save(layout.root)
    return layout.config


def _mix(weights: dict[str, float]) -> str:
    return (f"{weights['coarse']:g} S_c + {weights['frame_weak']:g} S_fw + "
            f"{weights['frame_strong']:g} S_fs, temperatures {weights['frame_weak_temperature']:g}"
            f" (S_fw) and {weights['tib_temperature']:g} (TIB gate)")


def format_calibration(calibration: dict[str, Any]) -> str:
    """The calibration block of the eval report, as text."""
    lines = [f"calibration at rerank depth {calibration['depth']} on "
             f"{calibration['calibration_queries']} captions ({calibration['candidates']} mixes "
             f"tried; objective: mean of R@1, R@5, R@10):",
             f"  paper:  {_mix(calibration['paper'])}: {calibration['paper_objective']:.1f}",
             f"  chosen: {_mix(calibration['chosen'])}: {calibration['chosen_objective']:.1f}"]
    held = calibration["held_out"]
    if held is None:
        return "\n".join(lines)
    count = held["paper"]["count"]
    lines.append(f"held-out captions ({count}): chosen minus paper, R@K points [95 % paired "
                 "bootstrap interval]")
    groups = {"all": held, **held["by_kind"]}
    for group, result in groups.items():
        cells = []
        for k in RECALL_AT:
            gain = result["gain"][f"r{k}"]
            cells.append(f"R@{k} {result['paper'][f'r{k}']:.1f} -> {result['chosen'][f'r{k}']:.1f}"
                         f" ({gain['difference']:+.1f} [{gain['low']:+.1f}, "
                         f"{gain['high']:+.1f}])")
        lines.append(f"  {group:<8} " + "; ".join(cells))
    return "\n".join(lines)
