"""A trained checkpoint (temporal head, W_g, W_f) used by `mgvr index` and search."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli, save_tiny_checkpoint

import mgvr
from mgvr.model.head import head_frames
from mgvr.model.scoring import rerank_score
from mgvr.retriever import Retriever
from mgvr.retriever.rerank import batch_candidates


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model):
    """A checkpoint in the format `mgvr train` writes, with non-trivial W_g and W_f."""
    directory = tmp_path_factory.mktemp("run") / "checkpoint"
    head = save_tiny_checkpoint(directory, tiny_model, w_g_noise=0.3, w_f_noise=0.2)
    return directory, head.eval()


def test_index_and_search_apply_the_trained_head(tmp_path, corpus, checkpoint):
    directory, head = checkpoint
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ["a_testsrc.mp4", "c_bars.avi", "d_life.mpg", "g_long.mkv", "h_vfr.mp4"]:
        shutil.copy(corpus / name, videos / name)
    result = run_cli("index", str(videos), "--index", str(tmp_path / "idx"),
                     "--model-checkpoint", str(directory))
    assert result.returncode == 0, result.stderr

    retriever = Retriever(tmp_path / "idx", device="cpu")
    assert retriever.config.head_checkpoint == "model"  # copied into the index
    assert retriever.config.head_source == str(directory)
    clip_ids = retriever.catalog.all_clip_ids()
    records = retriever.catalog.clips_by_ids(clip_ids)
    batch = retriever.fine.read_batch([(records[i].part, records[i].row) for i in clip_ids])
    candidates = batch_candidates(batch, torch.device("cpu"))
    with torch.inference_mode():
        z = head_frames(head, candidates.frames, candidates.mask)
        # The stored coarse vector is the normalised mean of the head's outputs.
        expected_coarse = torch.nn.functional.normalize(
            (z * candidates.mask[..., None]).sum(1), dim=-1)
        assert torch.allclose(candidates.coarse, expected_coarse, atol=2e-3)
        for query in ["a test pattern", "colour bars"]:
            text, _ = retriever.encode_query(query)
            scores, _ = rerank_score(text[None], candidates.coarse, candidates.frames, z,
                                     candidates.mask, w_g=head.w_g,
                                     w_f=head.frame_weights(candidates.frames.shape[1]))
            exhaustive = [int(candidates.clip_ids[i]) for i in np.argsort(-scores[0].numpy())]
            hits = retriever.search(query, limit=len(clip_ids), rerank_depth=len(clip_ids)).hits
            assert [h.clip_id for h in hits] == exhaustive
            coarse = (text[None] @ head.w_g @ candidates.coarse.T)[0].numpy()  # t . (W_g v)
            coarse_only = retriever.search(query, limit=len(clip_ids), rerank=False).hits
            assert [h.clip_id for h in coarse_only] == [
                int(candidates.clip_ids[i]) for i in np.argsort(-coarse)]


def test_the_index_keeps_its_own_copy_of_the_checkpoint(tmp_path, corpus, checkpoint):
    """A training run continued after indexing (or a second demo) overwrites its checkpoint;
    a moved or copied index still searches; only a change to the index's own copy is
    refused."""
    directory, _ = checkpoint
    source = tmp_path / "run" / "checkpoint"
    shutil.copytree(directory, source)
    index = mgvr.Index(tmp_path / "idx", device="cpu")
    index.update(corpus / "nested", settle_seconds=0, model_checkpoint=str(source))
    expected = [(h.clip_id, round(h.score, 5)) for h in index.search("x")]
    assert len(expected) == 1
    for name in ("head.safetensors", "clip.safetensors"):  # `mgvr train --resume` rewrote them
        data = (source / name).read_bytes()
        (source / name).write_bytes(data[:-4] + b"\0\0\0\0")
    shutil.rmtree(tmp_path / "run")
    moved = tmp_path / "elsewhere" / "idx"
    shutil.copytree(tmp_path / "idx", moved)
    shutil.rmtree(tmp_path / "idx")
    result = run_cli("search", "x", "--index", str(moved), "--json")
    assert result.returncode == 0, result.stderr
    assert [(h["clip_id"], round(h["score"], 5)) for h in json.loads(result.stdout)["hits"]] \
        == expected
    head_file = moved / "model" / "head.safetensors"
    head_file.write_bytes(head_file.read_bytes()[:-4] + b"\0\0\0\0")
    result = run_cli("search", "x", "--index", str(moved))
    assert result.returncode == 2 and "the head changed since the index was built" in result.stderr


def test_a_first_run_killed_after_copying_a_checkpoint_uses_the_one_asked_for_next(
        tmp_path, corpus, checkpoint, tiny_model):
    """A first run killed between copying its checkpoint into model/ and writing mgvr.json
    leaves that copy; the next run, with another checkpoint, must index with the new one."""
    from mgvr.model.head import copy_checkpoint, head_sha256
    from mgvr.storage.catalog import Catalog

    directory, _ = checkpoint
    other = tmp_path / "other" / "checkpoint"
    save_tiny_checkpoint(other, tiny_model, w_g_noise=0.9, w_f_noise=0.5)
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    Catalog.create(index_dir / "catalog.sqlite").close()
    copy_checkpoint(other, index_dir / "model")  # what the killed run had copied
    result = run_cli("index", str(corpus / "nested"), "--index", str(index_dir),
                     "--model-checkpoint", str(directory))
    assert result.returncode == 0, result.stderr
    config = Retriever(index_dir, device="cpu").config
    assert config.head_source == str(directory)
    assert head_sha256(index_dir / "model") == head_sha256(directory) != head_sha256(other)
