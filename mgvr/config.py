"""IndexConfig: what built an index, saved as `mgvr.json` in the index directory.

Search reads it back to load the same model and to refuse a mismatched one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from mgvr.errors import IncompatibleIndexError

FORMAT_VERSION = 2  # 2: segmented coarse index, checksums, self-describing parts
CONFIG_FILENAME = "mgvr.json"

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
DEFAULT_FRAMES = 12
# MSR-VTT clips, which CLIP video retrievers (and EERCF's 12-frame sampling) are tuned on, last
# 10-32 s (about 15 s on average): 12 frames over 15 s keeps that sampling density, and 15 s is
# a time range a user can jump to.
DEFAULT_CLIP_SECONDS = 15.0
# A trained checkpoint's files (fine-tuned CLIP, head, W_g, W_f) are copied into this folder of
# the index, and the config names them relative to the index: a copied or moved index, or a
# training run continued with --resume, leaves its searches working.
INDEX_MODEL_DIR = "model"
RANDOM_WEIGHTS = "none"


def model_name_of(model: str) -> str:
    """How an index records a --model value (an architecture file is known by its stem)."""
    return Path(model).stem if model.endswith(".json") else model


def weights_name_of(pretrained: str) -> str:
    """How an index records a --pretrained value: a tag, 'none', or an absolute file path."""
    if pretrained.lower() in (RANDOM_WEIGHTS, "random", ""):
        return RANDOM_WEIGHTS
    path = Path(pretrained).expanduser()
    return str(path.resolve()) if path.is_file() else pretrained


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

    def check_request(self, root: Path, model: str | None, pretrained: str | None) -> None:
        """Refuse a --model / --pretrained that differs from what built the index at `root`
        (the one rule for index, search and serve)."""
        if model is not None and model_name_of(model) != self.name:
            raise IncompatibleIndexError(
                f"{root}: index built with {self.describe()}, not {model}; drop --model, or "
                "index with that model into another --index")
        if pretrained is not None and weights_name_of(pretrained) not in (
                self.pretrained, str((root / self.pretrained).resolve())):
            raise IncompatibleIndexError(
                f"{root}: index built with weights {self.pretrained}, not {pretrained}; drop "
                "--pretrained, or index with those weights into another --index")


@dataclass(frozen=True)
class IndexConfig:
    model: ModelIdentity
    frames_per_clip: int = DEFAULT_FRAMES
    clip_seconds: float = DEFAULT_CLIP_SECONDS
    feature_dtype: str = "float16"
    format_version: int = FORMAT_VERSION
    # A trained EERCF head (mgvr train): its files in the index (INDEX_MODEL_DIR), the sha256
    # of head.safetensors, and the checkpoint directory they were copied from.
    head_checkpoint: str | None = None
    head_sha256: str | None = None
    head_source: str | None = None
    # The rerank mix fitted to this index's model by `mgvr eval --calibrate --write`: keys
    # coarse, frame_weak, frame_strong, frame_weak_temperature, tib_temperature (any subset;
    # the rest keep their defaults). None: the defaults (mgvr.retriever.rerank.index_weights).
    rerank: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self, root: Path) -> IndexConfig:
        """This config with the model files kept inside the index (INDEX_MODEL_DIR) given as
        absolute paths, ready for loading."""
        def inside(path: str | None) -> str | None:
            if path is None or not (path == INDEX_MODEL_DIR
                                    or path.startswith(INDEX_MODEL_DIR + "/")):
                return path
            return str((Path(root) / path).resolve())

        return replace(self, model=replace(self.model, pretrained=inside(self.model.pretrained)),
                       head_checkpoint=inside(self.head_checkpoint))

    def save(self, index_dir: Path) -> None:
        path = index_dir / CONFIG_FILENAME
        tmp = path.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())  # a power loss leaves the old file or this one, whole
        tmp.replace(path)

    @classmethod
    def load(cls, index_dir: Path) -> IndexConfig:
        path = index_dir / CONFIG_FILENAME
        try:
            return cls.from_dict(json.loads(path.read_text()), path)
        except (OSError, ValueError) as e:
            raise IncompatibleIndexError(
                f"{path}: not a readable mgvr index config ({e}); "
                "point --index at an mgvr index or rebuild it with `mgvr index`"
            ) from e

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> IndexConfig:
        try:
            if not isinstance(data, dict) or "format_version" not in data:
                raise ValueError("no format_version")
            if data.get("format_version") != FORMAT_VERSION:
                raise IncompatibleIndexError(
                    f"{path}: index format {data.get('format_version')} is not the format "
                    f"{FORMAT_VERSION} this mgvr reads; rebuild the index with `mgvr index`"
                )
            data = {**data, "model": ModelIdentity(**data["model"])}
            return cls(**data)
        except (ValueError, TypeError, KeyError) as e:
            raise IncompatibleIndexError(
                f"{path}: not a readable mgvr index config ({e}); "
                "point --index at an mgvr index or rebuild it with `mgvr index`"
            ) from e
