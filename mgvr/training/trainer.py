"""The training loop: fine-tune CLIP with the temporal head, W_g and W_f on the EERCF loss.

Recipe (REFERENCE.md): Adam(0.9, 0.98, eps 1e-6) with decoupled weight decay on weight matrices,
one learning rate for the new modules and a much smaller one for CLIP, cosine schedule with
linear warm-up, gradient-norm clip, CLIP embedding layers frozen. One epoch visits every training
video once with one of its captions drawn at random; batch order and caption draws are seeded by
(seed, epoch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mgvr.errors import UsageError
from mgvr.indexer.decode import FrameRecipe
from mgvr.model.clip import ClipEncoder
from mgvr.model.head import (
    DEFAULT_HEAD_LAYERS,
    EercfHead,
    checkpoint_clip_args,
    head_config_for,
    init_from_clip,
    load_head,
)
from mgvr.model.losses import LossWeights, eercf_loss
from mgvr.training.checkpoint import (
    Progress,
    ResumeState,
    checkpoint_path,
    read_training_checkpoint,
    restore_optimizer,
    save_training_checkpoint,
)
from mgvr.training.datasets import CaptionedVideos
from mgvr.training.encoding import frame_features, text_features
from mgvr.training.frames import FrameCache, stack_frames

# Parameters of CLIP's input embeddings, frozen by the reference recipe.
EMBEDDING_PARAMETERS = ("token_embedding.", "positional_embedding", "visual.conv1.",
                        "visual.class_embedding", "visual.positional_embedding")
MAX_LOGIT_SCALE = 100.0
TRAIN_LOG = "train-log.jsonl"  # mean losses per epoch, one JSON object a line


@dataclass(frozen=True)
class TrainOptions:
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    frames: int = 12
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-4  # temporal head, W_g, W_f
    clip_lr: float = 1e-7
    weight_decay: float = 0.2
    warmup: float = 0.1  # share of all steps
    grad_clip: float = 1.0
    head_layers: int = DEFAULT_HEAD_LAYERS
    freeze_embeddings: bool = True
    seed: int = 0
    loss: LossWeights = field(default_factory=LossWeights)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainOptions:
        return cls(**{**data, "loss": LossWeights(**data["loss"])})

    def validate(self) -> None:
        for name in ("frames", "epochs", "batch_size", "head_layers"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, "
                                 f"not {getattr(self, name)}")
        if self.batch_size < 2:
            raise UsageError("--batch-size must be at least 2 (contrastive loss)")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"--warmup is a share of the steps in [0, 1), not {self.warmup}")


@dataclass(frozen=True)
class StepReport:
    epoch: int  # 0-based
    epochs: int
    step_in_epoch: int  # 1-based, after this step
    steps_per_epoch: int
    global_step: int
    total_steps: int
    losses: dict[str, float]
    lr: float
    seconds_per_step: float


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    steps: int
    epochs: int
    history: list[dict[str, Any]]
    skipped_videos: list[str]


def learning_rate_factor(step: int, total_steps: int, warmup: float) -> float:
    """Linear warm-up over the first `warmup` share of steps, then cosine decay to 0."""
    warmup_steps = int(total_steps * warmup)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(encoder: ClipEncoder, head: EercfHead,
                    options: TrainOptions) -> torch.optim.AdamW:
    """Param groups: (head | CLIP) x (decayed weight matrices | biases, norms, scales)."""
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    named = [("head", name, p) for name, p in head.named_parameters()]
    named += [("clip", name, p) for name, p in encoder.model.named_parameters()]
    for owner, name, parameter in named:
        if owner == "clip" and options.freeze_embeddings and name.startswith(
                EMBEDDING_PARAMETERS):
            parameter.requires_grad_(False)
            continue
        parameter.requires_grad_(True)
        # W_g and W_f start at identity: decaying them would pull the scores towards zero.
        decay = parameter.ndim >= 2 and name not in ("w_g", "w_f") and "embedding" not in name
        groups.setdefault((owner, decay), []).append(parameter)
    param_groups = [{"params": params, "lr": options.lr if owner == "head" else options.clip_lr,
                     "weight_decay": options.weight_decay if decay else 0.0,
                     "name": f"{owner}{'' if decay else '-no-decay'}"}
                    for (owner, decay), params in sorted(groups.items())]
    for group in param_groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6)


class _EpochPlan:
    """Batch order and caption draws of one epoch, from (seed, epoch) only."""

    def __init__(self, data: CaptionedVideos, usable: list[int], batch_size: int, seed: int,
                 epoch: int) -> None:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(np.array(usable))
        per_video = data.captions_of()
        picks = [per_video[v][rng.integers(len(per_video[v]))] for v in order]
        cut = len(order) - (len(order) % batch_size if len(order) % batch_size < 2 else 0)
        self.batches = [(order[i:i + batch_size], picks[i:i + batch_size])
                        for i in range(0, cut, batch_size)]


def _load_models(options: TrainOptions, device: str | None,
                 resume: ResumeState | None) -> tuple[ClipEncoder, EercfHead, int]:
    if resume is not None:
        model, pretrained = checkpoint_clip_args(resume.directory)
        encoder = ClipEncoder.load(model, pretrained, device)
        return encoder, load_head(resume.directory, encoder.device), -1
    encoder = ClipEncoder.load(options.model, options.pretrained, device)
    config = head_config_for(encoder.model, encoder.embed_dim, options.frames,
                             options.head_layers)
    config = replace(config, max_frames=max(config.max_frames, options.frames))
    head = EercfHead(config)
    copied = init_from_clip(head, encoder.model)
    return encoder, head.to(encoder.device), copied


def train(data: CaptionedVideos, out: Path, options: TrainOptions, cache_dir: Path,
          resume: bool = False, device: str | None = None, workers: int = 2,
          save_every: int = 0, on_step: Callable[[StepReport], None] | None = None,
          on_note: Callable[[str], None] | None = None,
          on_decode: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train and checkpoint into OUT/checkpoint (every epoch, and every `save_every` steps);
    OUT/train-log.jsonl gets the mean losses of each finished epoch."""
    note = on_note or (lambda message: None)
    out = Path(out)
    state = read_training_checkpoint(out) if resume else None
    if state is None and checkpoint_path(out) is not None:
        raise UsageError(f"{out} already holds a checkpoint; pass --resume to continue it or "
                         "choose another --out")
    if state is not None:
        options = TrainOptions.from_json(state.options)
        note(f"resuming {state.directory} at epoch {state.progress.epoch + 1}, step "
             f"{state.progress.global_step}, with the options saved there")
    options.validate()
    torch.manual_seed(options.seed)
    encoder, head, copied = _load_models(options, device, state)
    if copied >= 0:
        note(f"temporal head: {head.config.layers} layers of width {head.config.width}, "
             f"{copied} initialised from the text transformer")
    recipe = FrameRecipe(encoder.preprocess.image_size, encoder.preprocess.interpolation,
                         encoder.preprocess.resize_mode)
    cache = FrameCache(cache_dir, recipe, options.frames)
    failures = cache.fill(data.videos, workers, on_decode)
    for _, error in sorted(failures.items()):
        note(f"skipped: {error}")
    usable = [i for i in range(len(data.videos)) if i not in failures]
    if len(usable) < 2:
        raise UsageError(f"{data.source}: fewer than 2 decodable videos; nothing to train on")
    batch_size = min(options.batch_size, len(usable))

    optimizer = build_optimizer(encoder, head, options)
    progress = Progress(0, 0, 0)
    history: list[dict[str, Any]] = []
    if state is not None:
        restore_optimizer(optimizer, state)
        progress, history = state.progress, list(state.history)
    steps_per_epoch = len(_EpochPlan(data, usable, batch_size, options.seed, 0).batches)
    total_steps = steps_per_epoch * options.epochs
    out.mkdir(parents=True, exist_ok=True)
    encoder.model.train()
    head.train()
    trainable = [p for group in optimizer.param_groups for p in group["params"]]

    def save(at: Progress) -> Path:
        (out / TRAIN_LOG).write_text("".join(json.dumps(row) + "\n" for row in history))
        return save_training_checkpoint(out, encoder, head, optimizer, options.as_json(), at,
                                        history)

    global_step = progress.global_step
    for epoch in range(progress.epoch, options.epochs):
        plan = _EpochPlan(data, usable, batch_size, options.seed, epoch)
        skip = progress.step_in_epoch if epoch == progress.epoch else 0
        sums: dict[str, float] = {}
        for step, (videos, captions) in enumerate(plan.batches[skip:], start=skip + 1):
            started = time.perf_counter()
            factor = learning_rate_factor(global_step, total_steps, options.warmup)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            frames, mask = stack_frames([cache.load(data.videos[v]) for v in videos],
                                        options.frames)
            f = frame_features(encoder, frames, mask)
            t = text_features(encoder, [data.captions[c] for c in captions])
            mask_tensor = torch.from_numpy(mask).to(encoder.device)
            z = head(f, mask_tensor)
            scale = encoder.model.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
            parts = eercf_loss(t, f, z, mask_tensor, head.w_g, head.frame_weights(f.shape[1]),
                               scale, options.loss)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, options.grad_clip)
            optimizer.step()
            global_step += 1
            losses = parts.as_floats()
            for key, value in losses.items():
                sums[key] = sums.get(key, 0.0) + value
            sums["steps"] = sums.get("steps", 0.0) + 1
            if on_step:
                on_step(StepReport(epoch, options.epochs, step, len(plan.batches), global_step,
                                   total_steps, losses, options.lr * factor,
                                   time.perf_counter() - started))
            if save_every and global_step % save_every == 0 and step < len(plan.batches):
                save(Progress(epoch, step, global_step))
        steps = sums.pop("steps", 0.0)
        if steps:
            history.append({"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}})
        progress = Progress(epoch + 1, 0, global_step)
        save(progress)
    return TrainResult(checkpoint_path(out), global_step, options.epochs, history,
                       [str(data.videos[i]) for i in sorted(failures)])

