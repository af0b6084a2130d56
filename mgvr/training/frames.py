"""Frame cache: decode each video once, keep its sampled model-input frames as a .npy file.

A video's F frames are sampled uniformly over the whole video and resized by ffmpeg exactly as
`mgvr index` does (mgvr.indexer.decode), so training, evaluation and the index see the same
pixels. The cache key covers the file (path, size, mtime) and the recipe (frames, size, resize
rule), so a changed video or another model input size is decoded again, never mixed up. Files
are written to a temporary name and renamed: a killed run leaves no half-written entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mgvr.errors import DecodeError
from mgvr.indexer.decode import ClipSpan, FrameRecipe, decode_clip, probe


class FrameCache:
    def __init__(self, directory: Path, recipe: FrameRecipe, frames: int,
                 decode_timeout_s: float = 120.0) -> None:
        self.directory = Path(directory)
        self.recipe = recipe
        self.frames = frames
        self.decode_timeout_s = decode_timeout_s

    def _entry(self, video: Path) -> Path:
        stat = video.stat()
        key = (f"{video.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.frames}|"
               f"{self.recipe.image_size}|{self.recipe.interpolation}|{self.recipe.resize_mode}")
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.npy"

    def _decode(self, video: Path) -> np.ndarray:
        info = probe(str(video), self.decode_timeout_s)
        clip = decode_clip(str(video), info, ClipSpan(0, 0.0, info.duration_s), self.frames,
                           self.recipe, self.decode_timeout_s)
        return clip.frames

    def load(self, video: Path) -> np.ndarray:
        """(n, S, S, 3) uint8 frames of the video, n <= frames; decodes on a miss."""
        entry = self._entry(video)
        try:
            return np.load(entry)
        except (FileNotFoundError, ValueError, OSError):
            pass
        frames = self._decode(video)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, frames)
        tmp.replace(entry)
        return frames

    def fill(self, videos: Sequence[Path], workers: int = 2,
             progress: Callable[[int, int], None] | None = None) -> dict[int, DecodeError]:
        """Decode every video not cached yet; returns the failures by position in `videos`."""
        todo = [i for i, video in enumerate(videos) if not self._entry(video).is_file()]
        failures: dict[int, DecodeError] = {}

        def one(position: int) -> None:
            try:
                self.load(videos[position])
            except DecodeError as e:
                failures[position] = e

        with ThreadPoolExecutor(max(1, workers)) as pool:
            for done, _ in enumerate(pool.map(one, todo), start=1):
                if progress:
                    progress(done, len(todo))
        return failures


def stack_frames(clips: Sequence[np.ndarray], frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Clips of (n_i, S, S, 3) -> padded (B, F, S, S, 3) uint8 and (B, F) bool mask."""
    size = clips[0].shape[1]
    batch = np.zeros((len(clips), frames, size, size, 3), np.uint8)
    mask = np.zeros((len(clips), frames), bool)
    for i, clip in enumerate(clips):
        count = min(len(clip), frames)
        batch[i, :count] = clip[:count]
        mask[i, :count] = True
    return batch, mask
