"""`mgvr eval --index`: evaluation through the search users run, and `--calibrate --write`."""

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, save_tiny_checkpoint

from mgvr.config import IndexConfig
from mgvr.errors import IncompatibleIndexError
from mgvr.model.scoring import RerankWeights
from mgvr.retriever import Retriever
from mgvr.training.calibrate import (
    calibrate,
    mix_candidates,
    objective,
    split_queries,
    temperature_candidates,
)
from mgvr.training.commands import format_eval
from mgvr.training.datasets import load_dataset
from mgvr.training.through_index import index_queries, method_ranks


@pytest.fixture(scope="module")
def captioned_index(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """(captions.csv, index): 20 test clips of the synthetic corpus with their captions and
    kinds, indexed by the indexer behind `mgvr index` with a tiny checkpoint whose W_g and
    W_f are far from identity (so S_c, S_fw and S_fs rank differently and the mix matters)."""
    from mgvr.indexer import Indexer, IndexOptions
    from mgvr.training.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("captioned")
    save_tiny_checkpoint(root / "checkpoint", tiny_model, w_g_noise=0.5, w_f_noise=0.3)
    generate_corpus(root / "corpus", train_clips=1, test_clips=20, seed=5)
    data = load_dataset(root / "corpus", "test")
    videos = root / "videos"
    videos.mkdir()
    with (videos / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "caption", "kind"])
        for caption, video, kind in zip(data.captions, data.caption_video, data.caption_kind,
                                        strict=True):
            (videos / data.videos[video].name).hardlink_to(data.videos[video])
            writer.writerow([data.videos[video].name, caption, kind])
    index = root / "index"
    summary = Indexer(index, IndexOptions(model_checkpoint=str(root / "checkpoint"),
                                          settle_seconds=0, workers=2)).run(videos)
    assert summary.indexed == 20 and not summary.failures
    return videos / "captions.csv", index


def _search_ranks(index: Path, captions: Path, rerank: bool, depth: int) -> list[int]:
    """Rank of each caption's video in `Retriever.search`, the call behind `mgvr search`."""
    data = load_dataset(captions, "test")
    retriever = Retriever(index)
    try:
        ranks = []
        for caption, video in zip(data.captions, data.caption_video, strict=True):
            hits = retriever.search(caption, limit=len(data.videos), rerank_depth=depth,
                                    rerank=rerank).hits
            paths = [Path(hit.path) for hit in hits]
            ranks.append(paths.index(data.videos[video].resolve()) + 1)
        return ranks
    finally:
        retriever.close()


def test_eval_index_ranks_are_those_of_mgvr_search(captioned_index):
    captions, index = captioned_index
    result = run_cli("eval", str(captions), "--index", str(index), "--depths", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["index"] == str(index) and report["clips"] == 20 and report["queries"] == 20
    assert set(report["methods"]) == {"coarse", "fine", "coarse_to_fine@3"}
    for name, rerank, depth in (("coarse", False, 1), ("coarse_to_fine@3", True, 3)):
        ranks = torch.tensor(_search_ranks(index, captions, rerank, depth))
        summary = report["methods"][name]["text_to_video"]
        assert summary["mean_rank"] == pytest.approx(float(ranks.double().mean()))
        assert summary["r5"] == pytest.approx(100 * float((ranks <= 5).double().mean()))
        low, high = summary["intervals"]["r5"]
        assert low <= summary["r5"] <= high
    assert set(report["methods"]["fine"]["by_kind"]) == {"brief", "scene"}
    assert report["rerank_weights"] == {"coarse": 0.5, "frame_weak": 0.8, "frame_strong": 0.2,
                                        "frame_weak_temperature": 0.01, "tib_temperature": 0.1}
    text = format_eval(report)
    assert "gain over coarse" in text and "[95 % bootstrap interval" in text


def test_calibrated_mix_is_never_worse_than_the_paper_and_search_uses_it(captioned_index,
                                                                         tmp_path):
    captions, original = captioned_index
    index = tmp_path / "index"
    import shutil

    shutil.copytree(original, index)
    result = run_cli("eval", str(captions), "--index", str(index), "--depths", "3",
                     "--calibrate", "--calibration-share", "0.6", "--rerank-depth", "8",
                     "--write", "--json")
    assert result.returncode == 0, result.stderr
    calibration = json.loads(result.stdout)["calibration"]
    assert calibration["written"] == str(index / "mgvr.json")
    assert calibration["calibration_queries"] == 12  # 60 % of each kind's 10 captions
    assert calibration["chosen_objective"] >= calibration["paper_objective"]
    assert calibration["held_out"]["paper"]["count"] == 8
    chosen = RerankWeights(**calibration["chosen"])
    assert IndexConfig.load(index).rerank == calibration["chosen"]

    # Measured again, apart from the command: a fresh retriever takes the written mix as its
    # own, and on the calibration captions it ranks at least as well as the paper's mix.
    retriever = Retriever(index)
    try:
        assert retriever.weights == chosen
        queries = index_queries(retriever, load_dataset(captions, "test"))
        rows, _ = split_queries(queries.kinds, 0.6, seed=0)
        calibration_queries = queries.subset(rows)
        own = objective(method_ranks(retriever, calibration_queries, 8))  # the index's mix
        paper = objective(method_ranks(retriever, calibration_queries, 8, RerankWeights()))
        assert own == pytest.approx(calibration["chosen_objective"])
        assert paper == pytest.approx(calibration["paper_objective"])
        assert own >= paper
        # The search had something to choose from: the candidates do not all rank alike.
        scores = {objective(method_ranks(retriever, calibration_queries, 8, weights))
                  for weights in mix_candidates()[:12]}
        assert len(scores) > 1
    finally:
        retriever.close()


def test_calibration_split_is_per_kind_and_seeded():
    kinds = ["brief"] * 10 + ["scene"] * 6 + [None] * 4
    calibration, held = split_queries(kinds, 0.5, seed=1)
    assert sorted(calibration + held) == list(range(20))
    assert sum(kinds[i] == "brief" for i in calibration) == 5
    assert sum(kinds[i] == "scene" for i in calibration) == 3
    assert split_queries(kinds, 0.5, seed=1) == (calibration, held)
    assert split_queries(kinds, 0.5, seed=2) != (calibration, held)


def test_candidates_start_with_the_paper_and_differ_in_direction():
    mixes = mix_candidates()
    assert mixes[0] == RerankWeights()
    directions = {tuple(round(x / (m.coarse + m.frame_weak + m.frame_strong), 6)
                        for x in (m.coarse, m.frame_weak, m.frame_strong)) for m in mixes}
    assert len(directions) == len(mixes)
    assert RerankWeights(1.0, 1.6, 0.4) not in mixes  # twice the paper's direction
    temperatures = temperature_candidates(mixes[3])
    assert temperatures[0] == mixes[3] and len(set(temperatures)) == len(temperatures) == 16


def test_a_bad_rerank_entry_is_refused_with_advice(captioned_index, tmp_path):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(captioned_index[1], index)
    config = json.loads((index / "mgvr.json").read_text())
    (index / "mgvr.json").write_text(json.dumps({**config, "rerank": {"coarse": -1.0}}))
    with pytest.raises(IncompatibleIndexError, match="rerank"):
        Retriever(index)
    result = run_cli("search", "a red circle", "--index", str(index))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--calibrate --write" in result.stderr


def test_calibrate_needs_an_index(captioned_index):
    result = run_cli("eval", str(captioned_index[0]), "--calibrate")
    assert result.returncode == 2 and "--index" in result.stderr
    result = run_cli("eval", str(captioned_index[0]), "--index", str(captioned_index[1]),
                     "--write")
    assert result.returncode == 2 and "--calibrate" in result.stderr


def test_calibrate_in_process_reports_the_held_out_gain(captioned_index):
    captions, index = captioned_index
    retriever = Retriever(index)
    try:
        queries = index_queries(retriever, load_dataset(captions, "test"))
        result = calibrate(retriever, queries, depth=5, share=0.5, seed=3)
    finally:
        retriever.close()
    held = result.held_out
    assert held["paper"]["count"] == 10 and set(held["by_kind"]) == {"brief", "scene"}
    for k in (1, 5, 10):
        gain = held["gain"][f"r{k}"]
        assert gain["difference"] == pytest.approx(held["chosen"][f"r{k}"]
                                                   - held["paper"][f"r{k}"])
        assert gain["low"] <= gain["difference"] <= gain["high"]
