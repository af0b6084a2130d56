"""EERCF training losses: symmetric InfoNCE, the Pearson constraint and their weighted sum.

Notation as in scoring.py: B paired (caption, clip) rows per batch, F frames, D dims. Row i of
every (B, B) score matrix is caption i against all clips; the diagonal holds the true pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mgvr.model.scoring import (
    TIB_TEMPERATURE,
    coarse_score,
    coarse_vectors,
    frame_weak_score,
)

PEARSON_DIAGONAL_WEIGHT = 0.14


@dataclass(frozen=True)
class LossWeights:
    """Loss = weak * symNCE(coarse_mix S_c + frame_weak_mix S_fw)
            + tib * symNCE(S_fs) + pearson * [Pearson(t, v) + Pearson(t, g)]  (reference values).
    """

    weak: float = 0.8
    tib: float = 0.2
    pearson: float = 0.001
    coarse_mix: float = 0.5
    frame_weak_mix: float = 0.5


def symmetric_infonce(scores: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Mean of caption->clip and clip->caption cross-entropy.  (B, B) scores -> scalar."""
    logits = scores * logit_scale
    targets = torch.arange(scores.shape[0], device=scores.device)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, targets)
                  + torch.nn.functional.cross_entropy(logits.T, targets))


def pearson_constraint(text: torch.Tensor, video: torch.Tensor,
                       diagonal_weight: float = PEARSON_DIAGONAL_WEIGHT,
                       eps: float = 1e-5) -> torch.Tensor:
    """Pull dimension d of the text features to correlate with dimension d of the video ones.

    Each dimension is standardised over the batch; C = Zt^T Zx / B is (D, D);
    loss = diagonal_weight * sum_d (C_dd - 1)^2 (the off-diagonal weight is 0 in the reference,
    so only the diagonal of C is computed).  (B, D), (B, D) -> scalar.
    """
    def standardise(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(dim=0)) / (x.std(dim=0, unbiased=False) + eps)

    correlation = (standardise(text) * standardise(video)).sum(dim=0) / text.shape[0]
    return diagonal_weight * ((correlation - 1.0) ** 2).sum()


def self_gated_vectors(text: torch.Tensor, raw_frames: torch.Tensor, head_frames: torch.Tensor,
                       mask: torch.Tensor, temperature: float = TIB_TEMPERATURE) -> torch.Tensor:
    """The TIB's gated vector of each clip under its own caption, as in training.

    alpha_i = softmax((t_i . f_ij) / temperature) from the raw frames, without gradient;
    g_i = normalize(sum_j alpha_ij z_ij).  (B, D), (B, F, D), (B, F, D), (B, F) -> (B, D).
    """
    with torch.no_grad():
        own = torch.einsum("bd,bfd->bf", text, raw_frames) / temperature
        gate = torch.softmax(own.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.nn.functional.normalize((gate.unsqueeze(-1) * head_frames).sum(dim=1), dim=-1)


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    weak: torch.Tensor  # symNCE of the coarse + frame-weak mix
    tib: torch.Tensor  # symNCE of the TIB score
    pearson: torch.Tensor  # Pearson(t, v) + Pearson(t, g)

    def as_floats(self) -> dict[str, float]:
        return {"loss": float(self.total.detach()), "weak": float(self.weak.detach()),
                "tib": float(self.tib.detach()),
                "pearson": float(self.pearson.detach())}


def eercf_loss(text: torch.Tensor, raw_frames: torch.Tensor, head_frames: torch.Tensor,
               mask: torch.Tensor, w_g: torch.Tensor | None, w_f: torch.Tensor | None,
               logit_scale: torch.Tensor | float,
               weights: LossWeights = LossWeights()) -> LossParts:
    """The full EERCF loss over a batch of B pairs.

    text (B, D) L2-normalised captions; raw_frames f and head_frames z (B, F, D); mask (B, F).
    A term whose weight is 0 is not computed, so an ablation also saves its cost.
    """
    coarse = coarse_vectors(head_frames, mask)
    zero = text.new_zeros(())
    weak = tib = pearson = zero
    if weights.weak:
        mixed = weights.coarse_mix * coarse_score(text, coarse, w_g)
        if weights.frame_weak_mix:
            mixed = mixed + weights.frame_weak_mix * frame_weak_score(text, raw_frames, mask, w_f)
        weak = symmetric_infonce(mixed, logit_scale)
    gated = None
    if weights.tib or weights.pearson:
        gated = self_gated_vectors(text, raw_frames, head_frames, mask)
    if weights.tib:
        tib = symmetric_infonce(text @ gated.T, logit_scale)
    if weights.pearson:
        pearson = pearson_constraint(text, coarse) + pearson_constraint(text, gated)
    total = weights.weak * weak + weights.tib * tib + weights.pearson * pearson
    return LossParts(total, weak, tib, pearson)

