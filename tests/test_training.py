"""Losses, temporal head, checkpoints and the training loop, on the tiny real open_clip model."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG

from mgvr.model.clip import ClipEncoder
from mgvr.model.head import (
    EercfHead,
    checkpoint_clip_args,
    head_config_for,
    init_from_clip,
    load_checkpoint,
    load_head,
    save_checkpoint,
)
from mgvr.model.losses import (
    LossWeights,
    eercf_loss,
    pearson_constraint,
    self_gated_vectors,
    symmetric_infonce,
)
from mgvr.model.scoring import tib_score
from mgvr.training.encoding import frame_features, text_features
from mgvr.training.trainer import (
    TrainOptions,
    build_optimizer,
    learning_rate_factor,
    train,
)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """32 training and 16 test clips of the synthetic corpus (real mp4 files)."""
    from mgvr.training.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("synthetic")
    generate_corpus(root, train_clips=32, test_clips=16, seed=3)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One frame cache for the module: each video is decoded once."""
    return tmp_path_factory.mktemp("frame-cache")


def _unit(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)


@pytest.fixture(scope="module")
def tiny_encoder() -> ClipEncoder:
    return ClipEncoder.load(str(TINY_CONFIG), "none")


def test_symmetric_infonce_by_hand():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # Each row and column: -log(e / (e + 1)) = log(1 + e^-1).
    assert math.isclose(symmetric_infonce(scores, 1.0).item(), math.log(1 + math.exp(-1)),
                        rel_tol=1e-6)
    uneven = torch.tensor([[2.0, 1.0], [0.0, 0.0]])
    rows = (-torch.log_softmax(uneven, 1).diag()).mean()
    columns = (-torch.log_softmax(uneven.T, 1).diag()).mean()
    assert math.isclose(symmetric_infonce(uneven, 1.0).item(), (0.5 * (rows + columns)).item(),
                        rel_tol=1e-6)


def test_pearson_constraint_by_hand():
    text = torch.randn(16, 8, generator=torch.Generator().manual_seed(0))
    assert pearson_constraint(text, text).item() < 1e-6
    assert pearson_constraint(text, 3 * text + 2).item() < 1e-6  # correlation ignores scale
    # Perfect anti-correlation: C_dd = -1 in every dimension -> 0.14 * 8 * (-2)^2.
    assert math.isclose(pearson_constraint(text, -text).item(), 0.14 * 8 * 4, rel_tol=1e-4)


def test_self_gated_vectors_match_the_tib_and_stop_the_gate_gradient():
    text, raw, head = _unit(5, 8), _unit(5, 4, 8, seed=1), _unit(5, 4, 8, seed=2)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[2, 2:] = False
    raw.requires_grad_(True)
    head.requires_grad_(True)
    gated = self_gated_vectors(text, raw, head, mask)
    scores, _ = tib_score(text, raw.detach(), head.detach(), mask)
    assert torch.allclose((text * gated).sum(-1), scores.diag(), atol=1e-6)
    gated.sum().backward()
    assert raw.grad is None and head.grad is not None


def test_loss_is_the_weighted_sum_and_zero_weights_drop_terms():
    text, raw, head = _unit(6, 8), _unit(6, 3, 8, seed=1), _unit(6, 3, 8, seed=2)
    mask = torch.ones(6, 3, dtype=torch.bool)
    parts = eercf_loss(text, raw, head, mask, None, None, 20.0)
    assert math.isclose(parts.total.item(), 0.8 * parts.weak.item() + 0.2 * parts.tib.item()
                        + 0.001 * parts.pearson.item(), rel_tol=1e-6)
    ablated = eercf_loss(text, raw, head, mask, None, None, 20.0,
                         LossWeights(tib=0.0, pearson=0.0))
    assert ablated.tib.item() == 0 and ablated.pearson.item() == 0
    assert math.isclose(ablated.total.item(), 0.8 * parts.weak.item(), rel_tol=1e-6)


def test_head_starts_from_the_text_tower(tiny_encoder):
    model = tiny_encoder.model
    head = EercfHead(head_config_for(model, tiny_encoder.embed_dim, frames=6))
    assert init_from_clip(head, model) == 2  # the tiny text tower has 2 of the 4 layers
    assert torch.equal(head.temporal.positional_embedding[:6], model.positional_embedding[:6])
    x = torch.randn(3, 6, tiny_encoder.embed_dim)
    with torch.no_grad():
        ours = head.temporal.resblocks[0](x, torch.zeros(3, 6, dtype=torch.bool))
        theirs = model.transformer.resblocks[0](x)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_head_ignores_padded_frames_and_normalises():
    torch.manual_seed(0)
    head = EercfHead(head_config_for(torch.nn.Module(), 16, frames=5)).eval()
    frames = _unit(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        z = head(frames, mask)
        alone = head(frames[1:, :3], mask[1:, :3])
    assert torch.allclose(z[1, :3], alone[0], atol=1e-5)
    assert torch.all(z[1, 3:] == 0)
    assert torch.allclose(z[0].norm(dim=-1), torch.ones(5), atol=1e-5)


def test_checkpoint_round_trip(tiny_encoder, tmp_path):
    torch.manual_seed(1)
    head = EercfHead(head_config_for(tiny_encoder.model, tiny_encoder.embed_dim, frames=4))
    with torch.no_grad():
        head.w_g.add_(0.01 * torch.randn_like(head.w_g))
        head.w_f.add_(0.01 * torch.randn_like(head.w_f))
    identity = tiny_encoder.identity
    save_checkpoint(tmp_path, tiny_encoder.model, identity.name, identity.architecture, head)
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".safetensors"}  # no pickle
    loaded = load_head(tmp_path)
    frames, mask = _unit(3, 4, identity.embed_dim), torch.ones(3, 4, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(loaded(frames, mask), head.eval()(frames, mask), atol=1e-6)
    assert torch.equal(loaded.w_g, head.w_g) and torch.equal(loaded.w_f, head.w_f)
    model, pretrained = checkpoint_clip_args(tmp_path)
    assert model.endswith(".json") and pretrained.endswith("clip.safetensors")
    encoder, again = load_checkpoint(tmp_path)
    assert torch.equal(again.w_g, head.w_g)
    text = ["a red circle"]
    assert torch.allclose(encoder.encode_texts(text)[0], tiny_encoder.encode_texts(text)[0])


def test_learning_rate_schedule():
    factors = [learning_rate_factor(step, 100, 0.1) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[-1] < 0.01
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))


def test_a_few_steps_lower_the_loss():
    encoder = ClipEncoder.load(str(TINY_CONFIG), "none")
    encoder.model.train()
    options = TrainOptions(frames=4, lr=1e-3, clip_lr=1e-3, freeze_embeddings=False)
    torch.manual_seed(0)
    head = EercfHead(head_config_for(encoder.model, encoder.embed_dim, frames=4))
    init_from_clip(head, encoder.model)
    optimizer = build_optimizer(encoder, head, options)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 4, 64, 64, 3), dtype=np.uint8)
    mask = np.ones((8, 4), bool)
    captions = [f"clip number {i} shows {word}" for i, word in
                enumerate(["red", "blue", "green", "a cat", "a dog", "rain", "snow", "fire"])]

    def loss() -> torch.Tensor:
        f = frame_features(encoder, frames, mask)
        t = text_features(encoder, captions)
        mask_tensor = torch.from_numpy(mask)
        return eercf_loss(t, f, head(f, mask_tensor), mask_tensor, head.w_g, head.w_f,
                          encoder.model.logit_scale.exp()).total

    first = loss()
    for _ in range(8):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.7 * first.item()


class _Stop(Exception):
    pass


def _train(corpus: Path, out: Path, cache: Path, stop_at: int | None = None,
           resume: bool = False, epochs: int = 2):
    from mgvr.training.datasets import load_dataset

    def on_step(report):
        if stop_at is not None and report.global_step == stop_at:
            raise _Stop

    options = TrainOptions(model=str(TINY_CONFIG), pretrained="none", frames=4, epochs=epochs,
                           batch_size=4, lr=1e-3, clip_lr=1e-3, freeze_embeddings=False)
    data = load_dataset(corpus, "train").subset(range(12))  # 3 steps per epoch
    return train(data, out, options, cache, resume=resume,
                 save_every=1, on_step=on_step)


def test_train_checkpoints_and_resumes_to_the_same_weights(small_corpus, cache_dir, tmp_path):
    cache = cache_dir
    straight = _train(small_corpus, tmp_path / "straight", cache)
    assert straight.steps == 6 and len(straight.history) == 2
    with pytest.raises(_Stop):  # killed in epoch 2, after its first step was checkpointed
        _train(small_corpus, tmp_path / "resumed", cache, stop_at=5)
    resumed = _train(small_corpus, tmp_path / "resumed", cache, resume=True)
    assert resumed.steps == 6
    a, b = load_head(straight.checkpoint), load_head(resumed.checkpoint)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-5), name
    from mgvr.errors import UsageError

    with pytest.raises(UsageError, match="--resume"):
        _train(small_corpus, tmp_path / "straight", cache)



def _scene_captions_file(corpus: Path, split: str, path: Path) -> Path:
    """A captions CSV with one scene caption per clip of a split (the generic file format)."""
    import csv
    import json
    import random

    from mgvr.training.synthetic import Scene, scene_caption

    fields = set(Scene.__dataclass_fields__)
    rng = random.Random(0)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption"])
        for video in json.loads((corpus / "MSRVTT_data.json").read_text())["videos"]:
            if video["split"] == split:
                scene = Scene(**{k: v for k, v in video.items() if k in fields})
                writer.writerow([corpus / "videos" / f"{video['video_id']}.mp4",
                                 scene_caption(scene, rng)])
    return path


def test_a_short_run_beats_chance_by_a_wide_margin(small_corpus, cache_dir, tmp_path):
    from mgvr.training.datasets import load_dataset
    from mgvr.training.evaluate import run_evaluation

    train_file = _scene_captions_file(small_corpus, "train", tmp_path / "train.csv")
    test_file = _scene_captions_file(small_corpus, "test", tmp_path / "test.csv")
    options = TrainOptions(model=str(TINY_CONFIG), pretrained="none", frames=4, epochs=8,
                           batch_size=8, lr=2e-3, clip_lr=2e-3, freeze_embeddings=False)
    result = train(load_dataset(train_file, "train"), tmp_path / "run", options, cache_dir)
    assert result.history[-1]["loss"] < 0.8 * result.history[0]["loss"]

    def mean_rank(captions: Path) -> float:
        report = run_evaluation(load_dataset(captions, "test"), cache_dir=cache_dir,
                                checkpoint=result.checkpoint, depths=(5,), timing_queries=3)
        return report["methods"]["fine"]["text_to_video"]["mean_rank"]

    # Chance: the mean rank of a random order is (clips + 1) / 2.
    assert mean_rank(train_file) < 0.5 * (32 + 1) / 2  # the 32 training clips
    assert mean_rank(test_file) < 0.6 * (16 + 1) / 2  # 16 held-out clips
