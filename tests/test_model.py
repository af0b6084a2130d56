"""Real open_clip code on a tiny architecture; model resolution and its error messages."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mgvr.errors import IncompatibleIndexError, ModelLoadError, UsageError
from mgvr.model import weights
from mgvr.model.clip import ClipEncoder, load_for_index


def test_tiny_model_encodes_normalised_vectors(tiny_model, tiny_weights):
    encoder = ClipEncoder.load(tiny_model["model"], tiny_model["pretrained"], "cpu")
    identity = encoder.identity
    assert (identity.name, identity.embed_dim, identity.image_size) == ("mgvr-test-tiny", 64, 64)
    assert identity.weights_sha256 == weights.file_sha256(tiny_weights)
    assert identity.architecture["embed_dim"] == 64  # saved so search can rebuild the model
    frames = np.random.default_rng(0).integers(0, 255, (70, 64, 64, 3), dtype=np.uint8)
    features = encoder.encode_frames(frames)
    assert features.shape == (70, 64)
    assert torch.allclose(features.norm(dim=1), torch.ones(70), atol=1e-5)
    one_by_one = torch.cat([encoder.encode_frames(frames[i:i + 1]) for i in range(3)])
    assert torch.allclose(one_by_one, features[:3], atol=1e-5)  # batching changes nothing
    text, truncated = encoder.encode_texts(["a man cooking", "word " * 200])
    assert text.shape == (2, 64) and truncated == [False, True]
    with pytest.raises(UsageError, match="empty query"):
        encoder.encode_texts(["   "])


def test_random_init_is_reproducible_and_weights_are_checked(tiny_model, tiny_weights, tmp_path):
    first = ClipEncoder.load(tiny_model["model"], "none", "cpu").identity
    second = ClipEncoder.load(tiny_model["model"], "none", "cpu").identity
    assert first.weights_sha256 == second.weights_sha256 != weights.file_sha256(tiny_weights)
    assert load_for_index(first, "cpu").identity.weights_sha256 == first.weights_sha256
    changed = tmp_path / "changed.pt"
    state = torch.load(tiny_weights)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, changed)
    built = ClipEncoder.load(tiny_model["model"], str(changed), "cpu").identity
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, changed)  # the file changes after the index was built
    with pytest.raises(IncompatibleIndexError, match="changed since the index was built"):
        load_for_index(built, "cpu")


@pytest.mark.parametrize(("model", "pretrained", "message"), [
    ("ViT-Nope-99", "openai", "unknown model 'ViT-Nope-99'; choose one of"),
    ("ViT-B-32", "no_such_tag", "neither a pretrained tag of ViT-B-32 \\(openai"),
    ("ViT-B-32", "/missing/weights.pt", "nor an existing weights file"),
    ("/missing/arch.json", None, "cannot read model config"),
    ("local-dir:/missing/dir", None, "no open_clip_config.json"),
])
def test_bad_model_choices_are_explained(model, pretrained, message):
    with pytest.raises(UsageError, match=message):
        ClipEncoder.load(model, pretrained, "cpu")


def test_uncached_weights_without_network_fail_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(weights, "HUB_HOST", "127.0.0.1")  # no HTTPS server here: refused
    started = time.monotonic()
    message = "not cached and 127.0.0.1 is unreachable.*--pretrained"
    with pytest.raises(ModelLoadError, match=message):
        ClipEncoder.load("ViT-B-32", "openai", "cpu")
    assert time.monotonic() - started < weights.HUB_PROBE_SECONDS + 10  # not a retry loop


def test_a_cached_tag_is_loaded_from_its_file_with_the_tags_preprocessing(tmp_path):
    """open_clip is handed the cached file itself (huggingface_hub is never asked, so nothing
    global is switched offline), with the preprocessing open_clip would apply for the tag."""
    snapshot = (tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots"
                / "0123abcd")
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    code = ("import json; from mgvr.model import weights; "
            "r = weights.resolve('ViT-B-32', 'openai'); "
            "print(json.dumps([r.pretrained, r.load_pretrained, str(r.weights_file), "
            "r.preprocess]))")
    # A fresh process: huggingface_hub reads HF_HUB_CACHE when it is imported.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120, env={**os.environ, "HF_HUB_CACHE": str(tmp_path)}).stdout
    tag, loaded, weights_file, preprocess = json.loads(out)
    assert tag == "openai"
    assert loaded == weights_file == str(snapshot / "open_clip_pytorch_model.bin")
    assert preprocess["interpolation"] == "bicubic" and preprocess["mean"][0] == 0.48145466


def test_local_dir_model_is_loaded_and_identified_by_its_weights(tmp_path, tiny_weights,
                                                                  monkeypatch):

    from conftest import TINY_CONFIG
    from safetensors.torch import save_file

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": json.loads(TINY_CONFIG.read_text()),
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    save_file(torch.load(tiny_weights), folder / "open_clip_model.safetensors")
    monkeypatch.chdir(tmp_path)
    encoder = ClipEncoder.load("local-dir:my-model", None, "cpu")
    assert encoder.identity.name == f"local-dir:{folder}"  # absolute: search works from anywhere
    assert encoder.identity.weights_sha256 == weights.file_sha256(
        folder / "open_clip_model.safetensors")
    assert encoder.preprocess.mean == (0.5, 0.5, 0.5)
    reference = ClipEncoder.load(str(TINY_CONFIG), str(tiny_weights), "cpu")
    frames = np.full((2, 64, 64, 3), 128, np.uint8)
    text = ["a red ball"]
    assert torch.allclose(encoder.encode_texts(text)[0], reference.encode_texts(text)[0],
                          atol=1e-5)  # same weights, so the same text tower
    assert encoder.encode_frames(frames).shape == (2, 64)
