"""EERCF scores as pure tensor functions: no IO, no device moves, shapes in the docstrings.

Notation: Q queries, N clips, F frames per clip (padded; `mask` marks real frames), D dims.
Text and frame features are L2-normalised. Untrained (zero-shot) models use identity W_g,
W_f and z = f, which is what passing `None` means below.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FRAME_WEAK_TEMPERATURE = 0.01
TIB_TEMPERATURE = 0.1


@dataclass(frozen=True)
class RerankWeights:
    """The rerank mix S = coarse * S_c + frame_weak * S_fw + frame_strong * S_fs and the two
    softmax temperatures inside S_fw and S_fs (the paper's values by default)."""

    coarse: float = 0.5
    frame_weak: float = 0.8
    frame_strong: float = 0.2
    frame_weak_temperature: float = FRAME_WEAK_TEMPERATURE
    tib_temperature: float = TIB_TEMPERATURE

    def __post_init__(self) -> None:
        if min(self.coarse, self.frame_weak, self.frame_strong) < 0:
            raise ValueError(f"rerank weights must not be negative: {self}")
        if min(self.frame_weak_temperature, self.tib_temperature) <= 0:
            raise ValueError(f"rerank temperatures must be positive: {self}")


def coarse_vectors(frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, F, D) frames, (N, F) bool mask -> (N, D): normalised mean over real frames."""
    weights = mask.to(frames.dtype).unsqueeze(-1)
    summed = (frames * weights).sum(dim=1)
    return torch.nn.functional.normalize(summed, dim=-1)


def coarse_score(text: torch.Tensor, coarse: torch.Tensor,
                 w_g: torch.Tensor | None = None) -> torch.Tensor:
    """S_c = t . (W_g v).  (Q, D), (N, D), optional (D, D) -> (Q, N)."""
    if w_g is not None:
        coarse = coarse @ w_g.T
    return text @ coarse.T


def frame_similarities(text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """s_qnj = t_q . f_nj.  (Q, D), (N, F, D) -> (Q, N, F)."""
    n, f, d = frames.shape
    return (frames.reshape(n * f, d) @ text.T).T.reshape(text.shape[0], n, f)


def _masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def frame_weak_score(text: torch.Tensor, frames: torch.Tensor, mask: torch.Tensor,
                     w_f: torch.Tensor | None = None,
                     temperature: float = FRAME_WEAK_TEMPERATURE) -> torch.Tensor:
    """S_fw = sum_j s_j a_j with a = softmax(s / temperature) W_f.

    (Q, D), (N, F, D), (N, F) bool, optional (F, F) -> (Q, N).
    """
    similarities = frame_similarities(text, frames)
    attention = _masked_softmax(similarities / temperature, mask)
    if w_f is not None:
        attention = attention @ w_f
    return (similarities.masked_fill(~mask, 0.0) * attention).sum(dim=-1)


def tib_score(text: torch.Tensor, raw_frames: torch.Tensor, head_frames: torch.Tensor,
              mask: torch.Tensor,
              temperature: float = TIB_TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-gated interaction block: S_fs = t . normalize(sum_j alpha_j z_j).

    The gate alpha = softmax((t . f_j) / temperature) comes from the raw frames f; z are the
    temporal-head frames (pass the raw frames again for a zero-shot model).
    (Q, D), (N, F, D), (N, F, D), (N, F) bool -> scores (Q, N), gate (Q, N, F).
    Computed without materialising the (Q, N, D) gated vectors:
    t . g = (sum_j alpha_j t.z_j) / sqrt(alpha^T (Z Z^T) alpha).
    """
    raw_similarities = frame_similarities(text, raw_frames)
    gate = _masked_softmax(raw_similarities / temperature, mask)
    text_dot_head = (raw_similarities if head_frames is raw_frames
                     else frame_similarities(text, head_frames))
    numerator = (gate * text_dot_head.masked_fill(~mask, 0.0)).sum(dim=-1)
    gram = head_frames @ head_frames.transpose(1, 2)  # (N, F, F)
    squared_norm = torch.einsum("qnf,nfg,qng->qn", gate, gram, gate)
    return numerator / squared_norm.clamp_min(1e-12).sqrt(), gate


def rerank_score(text: torch.Tensor, coarse: torch.Tensor, raw_frames: torch.Tensor,
                 head_frames: torch.Tensor, mask: torch.Tensor,
                 weights: RerankWeights = RerankWeights(), w_g: torch.Tensor | None = None,
                 w_f: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fine score of the second stage: (Q, N) scores and the (Q, N, F) TIB gate."""
    strong, gate = tib_score(text, raw_frames, head_frames, mask, weights.tib_temperature)
    score = (weights.coarse * coarse_score(text, coarse, w_g)
             + weights.frame_weak * frame_weak_score(text, raw_frames, mask, w_f,
                                                     weights.frame_weak_temperature)
             + weights.frame_strong * strong)
    return score, gate


def coarse_to_fine_order(by_coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """The two-stage ranking, the one rule that search and evaluation both run.

    (Q, K) item ids in coarse order (best first) and (Q, R) fine scores of the first R of them,
    R <= K -> (Q, K) ids in final order: those R by fine score (ties keep their coarse order),
    then the other K - R in coarse order. R = 0 is coarse retrieval alone."""
    depth = fine.shape[1]
    reranked = by_coarse[:, :depth].gather(
        1, fine.argsort(dim=1, descending=True, stable=True))
    return torch.cat([reranked, by_coarse[:, depth:]], dim=1)
