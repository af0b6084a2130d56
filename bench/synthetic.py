"""Synthetic indexes for benchmarks and tests: CLIP-like features written through mgvr's own
IndexWriter (so through the one commit protocol: Parquet parts with their sidecars, FAISS
segments, SQLite catalog), with no video decoding. Not shipped in the package; tests import it
from bench/ (see tests/conftest.py).

The features imitate what makes text-to-video search easy or hard in CLIP space: every clip
shares an "image" direction (clip-clip cosine ~0.4), content lives in a low-rank subspace of
topics, frames jitter around their clip (frame-frame cosine ~0.85), and text queries share a
different "text" direction (the modality gap), so the best clip for a query scores ~0.4 and
queries sit apart from the clips, as real captions do. Recall of an approximate index depends
on such structure: isotropic random vectors would be a worst case no real collection shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mgvr.config import IndexConfig, ModelIdentity
from mgvr.indexer.writer import EncodedClip, FileFacts, IndexWriter
from mgvr.storage.catalog import Catalog
from mgvr.storage.layout import IndexLayout
from mgvr.storage.merge import merge_segments

PART_ROWS = 2000  # what `mgvr index` commits at most per part
CLIP_SECONDS = 15.0


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class SyntheticSpace:
    basis: np.ndarray  # (R, D) orthonormal rows: the content subspace
    topics: np.ndarray  # (K, R) topic centres in that subspace
    image_direction: np.ndarray  # (D,) shared by every clip
    text_direction: np.ndarray  # (D,) shared by every query

    @classmethod
    def make(cls, dim: int, topics: int, rank: int = 64, seed: int = 0) -> SyntheticSpace:
        rng = np.random.default_rng(seed)
        rank = min(rank, dim)
        basis = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)
        return cls(basis, rng.standard_normal((topics, rank)).astype(np.float32),
                   _unit(rng.standard_normal(dim)), _unit(rng.standard_normal(dim)))

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    def _content(self, topic: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
        latent = self.topics[topic] + spread * rng.standard_normal(
            (len(topic), self.basis.shape[0]), dtype=np.float32)
        return _unit(latent @ self.basis)

    def _noise(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        return _unit(rng.standard_normal((*shape, self.dim), dtype=np.float32))

    def clips(self, count: int, frames: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """-> frame features (N, F, D) and coarse vectors (N, D), float32, L2-normalised; the
        coarse vector is the normalised mean of the frames, as the indexer computes it."""
        topic = rng.integers(0, len(self.topics), count)
        clip = _unit(0.9 * self.image_direction + self._content(topic, 0.6, rng)
                     + 0.35 * self._noise((count,), rng))
        frame = _unit(clip[:, None, :] + 0.4 * self._noise((count, frames), rng))
        return frame, _unit(frame.mean(axis=1))

    def queries(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """-> (Q, D) float32 text-like query vectors."""
        topic = rng.integers(0, len(self.topics), count)
        return _unit(0.9 * self.text_direction + self._content(topic, 0.8, rng)
                     + 0.5 * self._noise((count,), rng))


def topics_for(clips: int) -> int:
    """About 200 clips per topic."""
    return max(8, clips // 200)


def write_index(root: Path, identity: ModelIdentity, clips: int, frames: int,
                space: SyntheticSpace, seed: int = 0, part_rows: int = PART_ROWS,
                merge: bool = True) -> None:
    """Create an mgvr index of `clips` synthetic clips in `root` (which must not hold one).

    Videos of 1 to 40 clips (15 s each) under /synthetic/, committed every `part_rows` clips
    (as `mgvr index` commits), then, with `merge`, every segment merged into one (as
    `mgvr compact` does): the layout a large, settled index has.
    """
    rng = np.random.default_rng(seed)
    layout = IndexLayout(root)
    if layout.exists():
        raise FileExistsError(f"{root}: already holds an index")
    root.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.create(layout.catalog)
    config = IndexConfig(model=identity, frames_per_clip=frames, clip_seconds=CLIP_SECONDS)
    config.save(root)
    frame_times = ((np.arange(frames, dtype=np.float32) + 0.5) * CLIP_SECONDS / frames)
    writer = IndexWriter(layout, catalog, config)
    video = 0
    try:
        for start in range(0, clips, part_rows):
            count = min(part_rows, clips - start)
            features, vectors = space.clips(count, frames, rng)
            row = 0
            while row < count:
                length = min(int(rng.integers(1, 41)), count - row)
                encoded = [EncodedClip(index, index * CLIP_SECONDS, (index + 1) * CLIP_SECONDS,
                                       frame_times + index * CLIP_SECONDS, features[row + index],
                                       vectors[row + index]) for index in range(length)]
                writer.add(FileFacts(f"/synthetic/video-{video:07d}.mp4", 1000 + video, video,
                                     None, length * CLIP_SECONDS, 640, 360), encoded)
                row += length
                video += 1
            writer.commit()
        if merge:
            merge_segments(layout, catalog, config, budget_s=None, everything=True)
    finally:
        writer.abort()
        catalog.close()
