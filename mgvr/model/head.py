"""The learned parts of EERCF: the temporal head (frames f -> z), W_g and W_f, and their files.

A trained checkpoint is a directory:

    checkpoint.json      format, the CLIP architecture and weights file, the head config
    clip.safetensors     the fine-tuned open_clip state dict (usable as --pretrained FILE)
    head.safetensors     temporal head, W_g (D, D) and W_f (F, F)
    <name>.json          the open_clip architecture, when it is not one open_clip ships

Everything is safetensors or JSON; nothing is pickled. `load_checkpoint` gives the encoder and
the head an index or a search needs; `head_frames` turns raw frame features into z.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mgvr.errors import ModelLoadError, UsageError
from mgvr.model.clip import ClipEncoder

CHECKPOINT_FORMAT = "mgvr.checkpoint/1"
CHECKPOINT_CONFIG = "checkpoint.json"
CLIP_WEIGHTS = "clip.safetensors"
HEAD_WEIGHTS = "head.safetensors"
DEFAULT_HEAD_LAYERS = 4
# Positions the head can embed; indexes may sample up to this many frames per clip.
DEFAULT_MAX_FRAMES = 32


@dataclass(frozen=True)
class HeadConfig:
    """Shape of the temporal head. `frames` is the F of W_f (frames per clip in training)."""

    width: int
    layers: int
    heads: int
    frames: int
    max_frames: int = DEFAULT_MAX_FRAMES
    mlp_ratio: float = 4.0
    activation: str = "quick_gelu"  # "quick_gelu" | "gelu": whatever the CLIP text tower used


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """Pre-LN transformer block; parameter names match open_clip's ResidualAttentionBlock so
    the text tower's weights load into it unchanged."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", QuickGELU() if activation == "quick_gelu" else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, key_padding_mask=padding, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TemporalHead(nn.Module):
    """z = normalize(blocks(f + pos) + f), attending only across a clip's real frames."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(config.max_frames, config.width))
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.resblocks = nn.ModuleList(
            _Block(config.width, config.heads, config.mlp_ratio, config.activation)
            for _ in range(config.layers))

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, F, D) raw frame features, (N, F) bool mask -> (N, F, D) z, zero where padded."""
        count = frames.shape[1]
        if count > self.positional_embedding.shape[0]:
            raise UsageError(f"{count} frames per clip, but the temporal head embeds at most "
                             f"{self.positional_embedding.shape[0]}; use fewer --frames")
        x = frames + self.positional_embedding[:count].to(frames.dtype)
        padding = ~mask
        for block in self.resblocks:
            x = block(x, padding)
        z = nn.functional.normalize(x + frames, dim=-1)
        return z * mask.unsqueeze(-1).to(z.dtype)


class EercfHead(nn.Module):
    """Temporal head plus the two learned score matrices: W_g (D, D) for the coarse score and
    W_f (F, F) for the frame-weak score. Identity W's and z = f mean zero-shot CLIP."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        self.temporal = TemporalHead(config)
        self.w_g = nn.Parameter(torch.eye(config.width))
        self.w_f = nn.Parameter(torch.eye(config.frames))

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, F, D), (N, F) bool -> z (N, F, D)."""
        return self.temporal(frames, mask)

    def frame_weights(self, frames: int) -> torch.Tensor:
        """W_f for clips padded to `frames` slots (F_index may be below the trained F: a short
        video gives fewer frames; the padded slots carry zero attention anyway)."""
        trained = self.w_f.shape[0]
        if frames > trained:
            raise UsageError(f"clips have {frames} frame slots but W_f was trained for "
                             f"{trained}; index with --frames {trained}")
        return self.w_f[:frames, :frames]


def head_frames(head: EercfHead | None, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Raw frame features f (N, F, D) + mask (N, F) -> z (N, F, D); z = f without a head."""
    if head is None:
        return frames
    return head(frames, mask)


def _activation_of(block: nn.Module) -> str:
    return "quick_gelu" if "quick" in type(block.mlp.gelu).__name__.lower() else "gelu"


def head_config_for(clip_model: nn.Module, embed_dim: int, frames: int,
                    layers: int = DEFAULT_HEAD_LAYERS,
                    max_frames: int = DEFAULT_MAX_FRAMES) -> HeadConfig:
    """A head of width D whose first layers can copy CLIP's text transformer (same width)."""
    blocks = _text_blocks(clip_model)
    if blocks is not None and _text_width(clip_model) == embed_dim:
        return HeadConfig(embed_dim, layers, blocks[0].attn.num_heads, frames, max_frames,
                          blocks[0].mlp.c_fc.out_features / embed_dim, _activation_of(blocks[0]))
    return HeadConfig(embed_dim, layers, max(1, embed_dim // 64), frames, max_frames)


def _text_blocks(clip_model: nn.Module) -> nn.ModuleList | None:
    transformer = getattr(clip_model, "transformer", None)
    return getattr(transformer, "resblocks", None)


def _text_width(clip_model: nn.Module) -> int | None:
    positions = getattr(clip_model, "positional_embedding", None)
    return int(positions.shape[1]) if positions is not None else None


def init_from_clip(head: EercfHead, clip_model: nn.Module) -> int:
    """Copy the first text-transformer layers and text positions into the head (the reference
    initialisation). Returns the number of layers copied (0 when the widths differ; the rest
    keep their random init, which happens when the text tower has fewer layers than the head).
    """
    blocks = _text_blocks(clip_model)
    if blocks is None or _text_width(clip_model) != head.config.width:
        return 0
    copied = 0
    with torch.no_grad():
        for target, source in zip(head.temporal.resblocks, blocks, strict=False):
            target.load_state_dict(
                {k: v for k, v in source.state_dict().items() if not k.startswith("ls_")})
            copied += 1
        positions = clip_model.positional_embedding
        count = min(len(positions), head.config.max_frames)
        head.temporal.positional_embedding[:count].copy_(positions[:count])
    return copied


def save_checkpoint(directory: Path, clip_model: nn.Module, clip_name: str,
                    architecture: dict[str, Any] | None, head: EercfHead,
                    extra: dict[str, Any] | None = None) -> None:
    """Write the model files of a checkpoint into `directory` (created if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in clip_model.state_dict().items()}
    save_file(state, str(directory / CLIP_WEIGHTS))
    save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
              str(directory / HEAD_WEIGHTS))
    model_arg = clip_name
    if architecture is not None:
        model_arg = f"{clip_name}.json"
        (directory / model_arg).write_text(json.dumps(architecture, indent=2))
    config = {"format": CHECKPOINT_FORMAT, "clip_model": model_arg, "clip_weights": CLIP_WEIGHTS,
              "head": asdict(head.config), **(extra or {})}
    (directory / CHECKPOINT_CONFIG).write_text(json.dumps(config, indent=2))


def copy_checkpoint(source: Path, destination: Path) -> None:
    """Copy the model files of a checkpoint (not its trainer state) into `destination`, which
    must not exist yet; written under a temporary name and renamed, so it is whole or absent."""
    source = Path(source)
    config = read_checkpoint_config(source)
    names = [CHECKPOINT_CONFIG, HEAD_WEIGHTS, config["clip_weights"]]
    if config["clip_model"].endswith(".json"):
        names.append(config["clip_model"])
    tmp = destination.with_name(destination.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in names:
        shutil.copyfile(source / name, tmp / name)
    os.replace(tmp, destination)


def read_checkpoint_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise UsageError(f"{directory}: not an mgvr checkpoint (no {CHECKPOINT_CONFIG}); pass "
                         "the directory `mgvr train --out DIR` wrote (DIR/checkpoint)") from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: unreadable checkpoint config ({e})") from e
    if config.get("format") != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path}: format {config.get('format')!r}, expected "
                             f"{CHECKPOINT_FORMAT!r}; retrain or use a matching mgvr version")
    return config


def checkpoint_clip_args(directory: Path) -> tuple[str, str]:
    """(--model, --pretrained) arguments that load the checkpoint's fine-tuned CLIP."""
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    model = config["clip_model"]
    if model.endswith(".json"):
        model = str(directory / model)
    return model, str(directory / config["clip_weights"])


def load_head(directory: Path, device: str | torch.device | None = None) -> EercfHead:
    """The checkpoint's temporal head with W_g and W_f, in eval mode."""
    directory = Path(directory)
    config = read_checkpoint_config(directory)
    head = EercfHead(HeadConfig(**config["head"]))
    try:
        head.load_state_dict(load_file(str(directory / HEAD_WEIGHTS)))
    except (OSError, RuntimeError) as e:
        raise ModelLoadError(f"{directory / HEAD_WEIGHTS}: cannot load the head "
                             f"({str(e).splitlines()[0]})") from e
    return head.to(device or "cpu").eval()


def load_checkpoint(directory: Path, device: str | None = None) -> tuple[ClipEncoder, EercfHead]:
    """The fine-tuned encoder and the head of a trained checkpoint directory."""
    model, pretrained = checkpoint_clip_args(directory)
    encoder = ClipEncoder.load(model, pretrained, device)
    return encoder, load_head(directory, encoder.device)


def head_sha256(directory: Path) -> str:
    from mgvr.model.weights import file_sha256

    return file_sha256(Path(directory) / HEAD_WEIGHTS)


def load_head_for_index(directory: str, expected_sha256: str,
                        device: str | torch.device | None = None) -> EercfHead:
    """The head an index was built with, refusing one whose weights changed since."""
    found = head_sha256(Path(directory))
    if found != expected_sha256:
        from mgvr.errors import IncompatibleIndexError

        raise IncompatibleIndexError(
            f"{directory}: the head changed since the index was built (sha256 {found[:12]}, "
            f"index has {expected_sha256[:12]}); restore it or re-index into a fresh --index")
    return load_head(Path(directory), device).requires_grad_(False)
