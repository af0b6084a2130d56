"""IndexConfig: what built an index, saved as `mgvr.json` in the index directory.

Search reads it back to load the same model and to refuse a mismatched one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mgvr.errors import IncompatibleIndexError

FORMAT_VERSION = 1
CONFIG_FILENAME = "mgvr.json"

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
DEFAULT_FRAMES = 12
# MSR-VTT clips, which CLIP video retrievers (and EERCF's 12-frame sampling) are tuned on, last
# 10-32 s (about 15 s on average): 12 frames over 15 s keeps that sampling density, and 15 s is
# a time range a user can jump to.
DEFAULT_CLIP_SECONDS = 15.0


@dataclass(frozen=True)
class ModelIdentity:
    """Which model and which weights produced the features."""

    name: str
    pretrained: str
    weights_sha256: str
    embed_dim: int
    image_size: int
    context_length: int
    # Architecture JSON for models that open_clip does not ship (a --model config file).
    architecture: dict[str, Any] | None = None

    def describe(self) -> str:
        return f"{self.name} ({self.pretrained}, weights sha256 {self.weights_sha256[:12]})"


@dataclass(frozen=True)
class IndexConfig:
    model: ModelIdentity
    frames_per_clip: int = DEFAULT_FRAMES
    clip_seconds: float = DEFAULT_CLIP_SECONDS
    feature_dtype: str = "float16"
    format_version: int = FORMAT_VERSION
    # A trained EERCF head (mgvr train): its checkpoint directory and head.safetensors sha256.
    head_checkpoint: str | None = None
    head_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def save(self, index_dir: Path) -> None:
        path = index_dir / CONFIG_FILENAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, index_dir: Path) -> IndexConfig:
        path = index_dir / CONFIG_FILENAME
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or "format_version" not in data:
                raise ValueError("no format_version")
            if data.get("format_version") != FORMAT_VERSION:
                raise IncompatibleIndexError(
                    f"{path}: index format {data.get('format_version')} is not the format "
                    f"{FORMAT_VERSION} this mgvr reads; rebuild the index with `mgvr index`"
                )
            data["model"] = ModelIdentity(**data["model"])
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise IncompatibleIndexError(
                f"{path}: not a readable mgvr index config ({e}); "
                "point --index at an mgvr index or rebuild it with `mgvr index`"
            ) from e
