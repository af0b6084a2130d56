"""Frame and caption features with gradients, for training.

The same arithmetic as ClipEncoder.encode_frames / encode_texts (which run under
inference_mode for indexing and evaluation): ClipEncoder.pixels -> CLIP tower -> L2
normalisation. Only real (unpadded) frames go through the image tower.
"""

from __future__ import annotations

import numpy as np
import torch

from mgvr.model.clip import ClipEncoder


def frame_features(encoder: ClipEncoder, frames: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """(B, F, S, S, 3) uint8 padded frames, (B, F) bool -> f (B, F, D), zero where padded."""
    batch, count = mask.shape
    device = encoder.device
    real = torch.from_numpy(frames[mask]).to(device)  # (R, S, S, 3), R real frames
    features = torch.nn.functional.normalize(
        encoder.model.encode_image(encoder.pixels(real)).float(), dim=-1)
    out = features.new_zeros(batch, count, features.shape[-1])
    return out.index_put((torch.from_numpy(mask).to(device),), features)


def text_features(encoder: ClipEncoder, captions: list[str]) -> torch.Tensor:
    """B captions -> t (B, D), truncated to the model's context length."""
    tokens = encoder.tokenizer(captions, context_length=encoder.identity.context_length)
    features = encoder.model.encode_text(tokens.to(encoder.device)).float()
    return torch.nn.functional.normalize(features, dim=-1)
