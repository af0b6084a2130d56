"""Scores against naive per-query, per-clip loops written straight from the formulas."""

import math

import torch

from mgvr.model.scoring import (
    RerankWeights,
    coarse_score,
    coarse_vectors,
    frame_weak_score,
    rerank_score,
    tib_score,
)


def _unit(*shape):
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def _data(q=3, n=5, f=6, d=16, seed=0):
    torch.manual_seed(seed)
    text, frames, head = _unit(q, d), _unit(n, f, d), _unit(n, f, d)
    mask = torch.ones(n, f, dtype=torch.bool)
    mask[1, 4:] = False  # a clip with only 4 real frames
    mask[3, 1:] = False  # a clip with a single frame
    return text, frames, head, mask


def _softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _dot(a, b):
    return sum(x * y for x, y in zip(a.tolist(), b.tolist(), strict=True))


def test_tib_matches_naive_loop():
    text, frames, head, mask = _data()
    scores, gate = tib_score(text, frames, head, mask)
    for q in range(text.shape[0]):
        for n in range(frames.shape[0]):
            real = [j for j in range(frames.shape[1]) if mask[n, j]]
            alpha = _softmax([_dot(text[q], frames[n, j]) / 0.1 for j in real])
            gated = sum(a * head[n, j] for a, j in zip(alpha, real, strict=True))
            gated = gated / gated.norm()
            assert math.isclose(scores[q, n].item(), _dot(text[q], gated), abs_tol=1e-9)
            assert math.isclose(gate[q, n, real].sum().item(), 1.0, abs_tol=1e-9)
            assert gate[q, n, ~mask[n]].abs().sum().item() == 0


def test_frame_weak_matches_naive_loop_with_w_f():
    text, frames, _, mask = _data(seed=1)
    w_f = torch.eye(6, dtype=torch.float64) + 0.05 * torch.randn(6, 6, dtype=torch.float64)
    scores = frame_weak_score(text, frames, mask, w_f)
    for q in range(text.shape[0]):
        for n in range(frames.shape[0]):
            sims = [_dot(text[q], frames[n, j]) for j in range(6)]
            real = [j for j in range(6) if mask[n, j]]
            soft = _softmax([sims[j] / 0.01 for j in real])
            attention = [0.0] * 6
            for a, j in zip(soft, real, strict=True):
                attention[j] = a
            mixed = [sum(attention[i] * w_f[i, k].item() for i in range(6)) for k in range(6)]
            expected = sum(sims[k] * mixed[k] for k in real)
            assert math.isclose(scores[q, n].item(), expected, abs_tol=1e-9)


def test_coarse_is_normalised_mean_of_real_frames_and_w_g_applies():
    text, frames, _, mask = _data(seed=2)
    coarse = coarse_vectors(frames, mask)
    expected = frames[1, :4].mean(0)
    assert torch.allclose(coarse[1], expected / expected.norm())
    assert torch.allclose(coarse[3], frames[3, 0])
    w_g = torch.randn(16, 16, dtype=torch.float64)
    scores = coarse_score(text, coarse, w_g)
    assert math.isclose(scores[2, 4].item(), _dot(text[2], w_g @ coarse[4]), abs_tol=1e-9)


def test_rerank_combines_with_reference_weights():
    text, frames, _, mask = _data(seed=3)
    coarse = coarse_vectors(frames, mask)
    combined, _ = rerank_score(text, coarse, frames, frames, mask)
    w = RerankWeights()
    expected = (w.coarse * coarse_score(text, coarse)
                + w.frame_weak * frame_weak_score(text, frames, mask)
                + w.frame_strong * tib_score(text, frames, frames, mask)[0])
    assert torch.allclose(combined, expected)
    assert (w.coarse, w.frame_weak, w.frame_strong) == (0.5, 0.8, 0.2)


def test_gate_points_at_the_matching_frame():
    torch.manual_seed(4)
    frames = _unit(1, 8, 32)
    text = frames[0, 5:6].clone()  # the query is exactly frame 5
    _, gate = tib_score(text, frames, frames, torch.ones(1, 8, dtype=torch.bool))
    assert gate[0, 0].argmax().item() == 5
