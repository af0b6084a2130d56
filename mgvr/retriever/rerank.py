"""Second stage: fetch the candidates' frame features and order them by the EERCF fine score."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mgvr.config import CONFIG_FILENAME, IndexConfig
from mgvr.errors import IncompatibleIndexError
from mgvr.model.head import EercfHead, head_frames
from mgvr.model.scoring import RerankWeights, rerank_score
from mgvr.storage.fine import FineBatch


@dataclass(frozen=True)
class FineCandidates:
    """Padded frame features of candidate clips, ready for the scoring functions."""

    clip_ids: np.ndarray  # (N,)
    coarse: torch.Tensor  # (N, D)
    frames: torch.Tensor  # (N, F, D)
    mask: torch.Tensor  # (N, F) bool
    frame_times: np.ndarray  # (N, F) float32, NaN where padded


def index_weights(config: IndexConfig, root: Path) -> RerankWeights:
    """The one place that decides an index's rerank mix: the calibrated one in its config,
    else the paper's."""
    if config.rerank is None:
        return RerankWeights()
    try:
        return RerankWeights(**config.rerank)
    except (TypeError, ValueError) as e:
        raise IncompatibleIndexError(
            f"{root / CONFIG_FILENAME}: unreadable 'rerank' entry ({e}); run `mgvr eval "
            "--calibrate --write` again or delete the entry to use the defaults") from e


def batch_candidates(batch: FineBatch, device: torch.device) -> FineCandidates:
    """A fetched batch (already padded) as scoring tensors on `device`: no per-row copies."""
    width = batch.frame_times.shape[1]
    return FineCandidates(
        clip_ids=batch.clip_ids,
        coarse=torch.from_numpy(batch.coarse).to(device),
        frames=torch.from_numpy(batch.features).to(device).float(),
        mask=torch.arange(width, device=device)[None, :]
        < torch.from_numpy(batch.n_frames).to(device)[:, None],
        frame_times=batch.frame_times,
    )


def score_candidates(text: torch.Tensor, candidates: FineCandidates,
                     weights: RerankWeights = RerankWeights(),
                     head: EercfHead | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(D,) query -> fine scores (N,), each clip's best-matching moment (N,) in seconds, and
    the TIB gate over its frames (N, F), which the best moment is the argmax of.

    With a trained head, z = head(f) for the TIB and its W_g and W_f enter the scores."""
    query = text.to(candidates.frames.device).unsqueeze(0)
    with torch.inference_mode():
        z = head_frames(head, candidates.frames, candidates.mask)
        w_g = head.w_g if head is not None else None
        w_f = head.frame_weights(candidates.frames.shape[1]) if head is not None else None
        scores, gate = rerank_score(query, candidates.coarse, candidates.frames, z,
                                    candidates.mask, weights, w_g, w_f)
    best_frame = gate[0].argmax(dim=1).cpu().numpy()
    moments = candidates.frame_times[np.arange(len(best_frame)), best_frame]
    return scores[0].cpu().numpy(), moments, gate[0].float().cpu().numpy()
