"""Resolve `--model` / `--pretrained` into something open_clip can load, without surprises.

Accepts an open_clip architecture name, an architecture JSON file, or `local-dir:PATH`; and a
pretrained tag, a local weights file, or `none` (seeded random init, for benchmarks). A tag whose
weights are not cached is only downloaded when the hub answers within seconds; otherwise the
user is told how to supply the weights instead of waiting through retries.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import platformdirs
from open_clip.pretrained import get_pretrained_cfg
from open_clip.transform import merge_preprocess_dict

from mgvr.errors import ModelLoadError, UsageError
from mgvr.hashing import sha256_file

RANDOM_INIT = "none"
HUB_HOST = "huggingface.co"
HUB_PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class ResolvedModel:
    """Arguments for open_clip plus what identifies the weights."""

    model_name: str  # as open_clip takes it
    pretrained: str | None  # tag or file path, as the index records it; None: random / local-dir
    weights_file: Path | None  # the file whose hash identifies the weights
    architecture: dict[str, Any] | None  # JSON config registered from a file, saved in the index
    # What open_clip is asked to load: the cached file of a tag (so huggingface_hub is never
    # asked, and never retries the network), else `pretrained` itself.
    load_pretrained: str | None = None
    # The tag's preprocessing (mean, std, resize), which open_clip applies for a tag but not
    # for a file: passed as force_preprocess_cfg when a tag is loaded from its cached file.
    preprocess: dict[str, Any] = field(default_factory=dict)


def register_architecture(architecture: dict[str, Any], name: str) -> None:
    """Make an architecture JSON known to open_clip under `name` (idempotent)."""
    if name in open_clip.list_models():
        return
    folder = Path(platformdirs.user_cache_dir("mgvr")) / "model_configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(architecture))
    open_clip.add_model_config(path)


def resolve(model: str, pretrained: str | None) -> ResolvedModel:
    architecture = None
    if model.endswith(".json"):
        path = Path(model)
        try:
            architecture = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: cannot read model config ({e}); pass an open_clip "
                             "architecture JSON file or a name from open_clip.list_models()"
                             ) from e
        model = path.stem
        register_architecture(architecture, model)

    if model.startswith("local-dir:"):
        folder = Path(model.removeprefix("local-dir:")).expanduser().resolve()
        if not (folder / "open_clip_config.json").is_file():
            raise UsageError(f"{folder}: no open_clip_config.json there; a local-dir: model needs "
                             "the folder that open_clip's push_to_hub/save wrote")
        # The same file open_clip will load, so the recorded hash identifies what was used.
        found = open_clip.factory._find_checkpoint_in_dir(folder)
        return ResolvedModel(f"local-dir:{folder}", None, Path(found) if found else None, None)

    if model not in open_clip.list_models():
        raise UsageError(f"unknown model '{model}'; choose one of open_clip.list_models() "
                         "(e.g. ViT-B-32, ViT-B-16, ViT-L-14), an architecture .json file, "
                         "or local-dir:PATH")

    if pretrained is None or pretrained.lower() in (RANDOM_INIT, "random", ""):
        return ResolvedModel(model, None, None, architecture)

    if not get_pretrained_cfg(model, pretrained):
        path = Path(pretrained)
        if not path.is_file():
            raise UsageError(f"'{pretrained}' is neither a pretrained tag of {model} "
                             f"({_tags_hint(model)}) nor an existing weights file; "
                             "pass one of those, or 'none' for random weights")
        return ResolvedModel(model, str(path.resolve()), path.resolve(), architecture,
                             str(path.resolve()))

    cached = cached_tag_weights(model, pretrained)
    if cached is None and not hub_reachable():
        raise ModelLoadError(
            f"weights for {model}/{pretrained} are not cached and {HUB_HOST} is unreachable; "
            "download them once on a machine with network (run any mgvr command there, or "
            "copy the HF cache), or pass --pretrained /path/to/weights.(bin|safetensors|pt)"
        )
    if cached is None:
        return ResolvedModel(model, pretrained, None, architecture, pretrained)
    return ResolvedModel(model, pretrained, cached, architecture, str(cached),
                         merge_preprocess_dict({}, get_pretrained_cfg(model, pretrained)))


def _tags_hint(model: str) -> str:
    tags = open_clip.list_pretrained_tags_by_model(model)
    return ", ".join(tags[:8]) + (" ..." if len(tags) > 8 else "") if tags else "none shipped"


def cached_tag_weights(model: str, tag: str) -> Path | None:
    """The cached file of a pretrained tag, looked up without any network access."""
    cfg = get_pretrained_cfg(model, tag)
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: "org/repo/filename", or "org/repo/" for its default file.
        repo_id, filename = os.path.split(cfg["hf_hub"])
        candidates = [filename] if filename else []
        candidates += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in candidates:
            found = try_to_load_from_cache(repo_id, name)
            if isinstance(found, str):
                return Path(found)
    if cfg.get("url"):
        path = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if path.is_file():
            return path
    return None


def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, cached by (path, size, mtime): big checkpoints take seconds."""
    stat = path.stat()
    cache_file = Path(platformdirs.user_cache_dir("mgvr")) / "weights-sha256.json"
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    cache[key] = sha256_file(path)
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    return cache[key]
