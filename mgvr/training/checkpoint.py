"""Training checkpoints: the model files of mgvr.model.head plus what a resume needs.

    OUT/checkpoint/   model files (checkpoint.json, clip.safetensors, head.safetensors, ...)
                      optimizer.safetensors   Adam moments, flattened to named tensors
                      trainer.json            options, progress (epoch, step), optimizer groups

A new checkpoint is written beside the old one and swapped in by renames, so a run killed while
saving still leaves a whole checkpoint (OUT/checkpoint, or OUT/checkpoint.old during the swap).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mgvr.errors import UsageError
from mgvr.model.head import EercfHead, save_checkpoint

CHECKPOINT_DIR = "checkpoint"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer.json"


@dataclass(frozen=True)
class Progress:
    epoch: int  # epochs finished
    step_in_epoch: int  # batches done in the current epoch
    global_step: int


def checkpoint_path(out: Path) -> Path | None:
    """The whole checkpoint under OUT, if any (after a kill mid-swap, the previous one)."""
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        candidate = Path(out) / name
        if (candidate / TRAINER_FILE).is_file():
            return candidate
    return None


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor],
                                                                  list[dict[str, Any]]]:
    state = optimizer.state_dict()
    tensors = {f"{param}.{name}": value.detach().cpu().contiguous()
               for param, entries in state["state"].items()
               for name, value in entries.items() if isinstance(value, torch.Tensor)}
    return tensors, state["param_groups"]


def save_training_checkpoint(out: Path, encoder, head: EercfHead,
                             optimizer: torch.optim.Optimizer, options: dict[str, Any],
                             progress: Progress, history: list[dict[str, Any]]) -> Path:
    out = Path(out)
    final, staging, old = (out / CHECKPOINT_DIR, out / f"{CHECKPOINT_DIR}.tmp",
                           out / f"{CHECKPOINT_DIR}.old")
    shutil.rmtree(staging, ignore_errors=True)
    identity = encoder.identity
    save_checkpoint(staging, encoder.model, identity.name, identity.architecture, head,
                    extra={"base_model": {"name": identity.name,
                                          "pretrained": options.get("pretrained")},
                           "frames": head.config.frames, "trained": asdict(progress)})
    tensors, groups = _optimizer_tensors(optimizer)
    save_file(tensors, str(staging / OPTIMIZER_FILE))
    (staging / TRAINER_FILE).write_text(json.dumps(
        {"options": options, "progress": asdict(progress), "param_groups": groups,
         "history": history}, indent=2))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass(frozen=True)
class ResumeState:
    directory: Path
    options: dict[str, Any]
    progress: Progress
    history: list[dict[str, Any]]
    param_groups: list[dict[str, Any]]
    optimizer_tensors: dict[str, torch.Tensor]


def read_training_checkpoint(out: Path) -> ResumeState:
    directory = checkpoint_path(out)
    if directory is None:
        raise UsageError(f"{out}: no checkpoint to resume from; start without --resume")
    try:
        trainer = json.loads((directory / TRAINER_FILE).read_text())
        tensors = load_file(str(directory / OPTIMIZER_FILE))
    except (OSError, ValueError) as e:
        raise UsageError(f"{directory}: unreadable checkpoint ({e}); start a new --out") from e
    return ResumeState(directory, trainer["options"], Progress(**trainer["progress"]),
                       trainer.get("history", []), trainer["param_groups"], tensors)


def restore_optimizer(optimizer: torch.optim.Optimizer, state: ResumeState) -> None:
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.optimizer_tensors.items():
        param, name = key.split(".", 1)
        entries.setdefault(int(param), {})[name] = value
    optimizer.load_state_dict({"state": entries, "param_groups": state.param_groups})
