"""The encode stage: decoded clips -> frame features (CLIP, and the trained head when the index
has one), the coarse vector and thumbnails. One class for the local pipeline and Ray's encode
actors, so both produce the same vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mgvr.config import IndexConfig
from mgvr.indexer.decode import FrameRecipe
from mgvr.indexer.stages import DecodedClipOf
from mgvr.indexer.thumbnails import encode_sprite
from mgvr.indexer.writer import EncodedClip
from mgvr.model.clip import ClipEncoder, load_for_index
from mgvr.model.head import EercfHead, head_frames, load_head_for_index
from mgvr.model.scoring import coarse_vectors


class EncodeStage:
    def __init__(self, encoder: ClipEncoder, head: EercfHead | None) -> None:
        self.encoder = encoder
        self.head = head

    @classmethod
    def for_index(cls, root: Path, config: IndexConfig, device: str | None,
                  encoder: ClipEncoder | None = None) -> EncodeStage:
        """The model an index was built with (checked against its recorded hashes)."""
        resolved = config.resolved(root)
        encoder = encoder or load_for_index(resolved.model, device)
        head = None
        if resolved.head_checkpoint:
            head = load_head_for_index(resolved.head_checkpoint, config.head_sha256,
                                       encoder.device)
            head.frame_weights(config.frames_per_clip)  # W_f must cover the index's frames
        return cls(encoder, head)

    @property
    def recipe(self) -> FrameRecipe:
        spec = self.encoder.preprocess
        return FrameRecipe(spec.image_size, spec.interpolation, spec.resize_mode)

    def frame_batch_size(self) -> int:
        return self.encoder.frame_batch_size()

    @torch.inference_mode()
    def encode(self, clips: list[DecodedClipOf]) -> list[EncodedClip]:
        if not clips:
            return []
        counts = [len(c.clip.frames) for c in clips]
        features = self.encoder.encode_frames(np.concatenate([c.clip.frames for c in clips]))
        width = max(counts)
        padded = features.new_zeros(len(clips), width, features.shape[1])
        mask = torch.zeros(len(clips), width, dtype=torch.bool)
        offset = 0
        for i, count in enumerate(counts):
            padded[i, :count] = features[offset:offset + count]
            mask[i, :count] = True
            offset += count
        device = self.encoder.device
        z = head_frames(self.head, padded.to(device), mask.to(device))
        coarse = coarse_vectors(z.float(), mask.to(device)).cpu().numpy()
        per_clip = features.numpy()
        out, offset = [], 0
        for i, (item, count) in enumerate(zip(clips, counts, strict=True)):
            span = item.clip.span
            out.append(EncodedClip(span.index, span.start_s, span.end_s, item.clip.frame_times,
                                   per_clip[offset:offset + count], coarse[i],
                                   encode_sprite(item.clip.frames)))
            offset += count
        return out
