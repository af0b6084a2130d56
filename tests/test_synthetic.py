"""The synthetic corpus: real mp4 files in the MSR-VTT layout, captions true to the pictures."""

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from mgvr.indexer.decode import ClipSpan, FrameRecipe, decode_clip, probe
from mgvr.training.datasets import read_msrvtt
from mgvr.training.synthetic import (
    COLOURS,
    MAIN_SIZE,
    MAX_TEST_CLIPS,
    SYNTHETIC_ARCHITECTURE,
    Scene,
    _shape_mask,
    generate_corpus,
    random_scene,
    render,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    summary = generate_corpus(root, train_clips=6, test_clips=30, seed=5)
    assert summary.written == 36
    return root


def _scenes(root: Path) -> dict[str, Scene]:
    videos = json.loads((root / "MSRVTT_data.json").read_text())["videos"]
    fields = set(Scene.__dataclass_fields__)
    return {v["video_id"]: Scene(**{k: (tuple(x) if isinstance(x, list) else x)
                                    for k, x in v.items() if k in fields}) for v in videos}


def test_layout_reads_as_msrvtt(corpus):
    train, test = read_msrvtt(corpus, "train"), read_msrvtt(corpus, "test")
    assert len(train.videos) == 6 and len(train.captions) == 24  # 4 captions each
    assert len(test.videos) == 30 and len(test.captions) == 30
    assert set(test.caption_kind) == {"scene", "brief"}
    assert all(path.suffix == ".mp4" and path.is_file() for path in train.videos + test.videos)
    with (corpus / "MSRVTT_JSFUSION_test.csv").open() as f:
        assert list(next(csv.reader(f))) == ["key", "vid_key", "video_id", "sentence", "kind"]


def test_test_queries_match_only_their_own_clip(corpus):
    scenes = _scenes(corpus)
    with (corpus / "MSRVTT_JSFUSION_test.csv").open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        own = scenes[row["video_id"]]
        key = own.scene_key() if row["kind"] == "scene" else own.brief_key()
        matching = [r["video_id"] for r in rows
                    if (scenes[r["video_id"]].scene_key() if row["kind"] == "scene"
                        else scenes[r["video_id"]].brief_key()) == key]
        assert matching == [row["video_id"]]
        words = row["sentence"].split()
        assert own.colour in words and own.shape in words
        if row["kind"] == "brief":
            assert own.brief_colour in words and own.brief_shape in words
        else:
            assert own.background in words and own.direction in words


def test_brief_object_shows_in_one_of_twelve_sampled_frames(corpus):
    """...at the demo model's input size, as the frame cache and the indexer decode it."""
    scenes = _scenes(corpus)
    size = SYNTHETIC_ARCHITECTURE["vision_cfg"]["image_size"]
    for video_id in ("video0", "video7"):
        path = str(corpus / "videos" / f"{video_id}.mp4")
        info = probe(path, 30)
        clip = decode_clip(path, info, ClipSpan(0, 0.0, info.duration_s), 12, FrameRecipe(size),
                           30)
        colour = np.array(COLOURS[scenes[video_id].brief_colour])
        near = (np.abs(clip.frames.astype(int) - colour).sum(-1) < 60).sum(axis=(1, 2))
        # The main object never has the brief object's colour, so only brief frames light up.
        assert (near > 15).sum() == 1, near.tolist()


def test_the_brief_object_never_covers_the_main_object():
    # The main object's pixel count stays that of its mask in every frame of every scene.
    rng = random.Random(0)
    for _ in range(300):
        scene = random_scene(rng)
        frames = render(scene)
        main = (frames == np.array(COLOURS[scene.colour], np.uint8)).all(-1).sum(axis=(1, 2))
        assert set(main.tolist()) == {int(_shape_mask(scene.shape, MAIN_SIZE).sum())}, scene


def test_regenerating_keeps_existing_videos(corpus):
    before = (corpus / "videos" / "video3.mp4").stat().st_mtime_ns
    assert generate_corpus(corpus, train_clips=6, test_clips=30, seed=5).written == 0
    assert (corpus / "videos" / "video3.mp4").stat().st_mtime_ns == before


def test_demo_generates_the_corpus_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from mgvr.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["demo", str(tmp_path / "demo"), "--train-clips", "3",
                                 "--test-clips", "2", "--generate-only"])
    assert result.exit_code == 0, result.output
    corpus = tmp_path / "demo" / "corpus"
    assert len(read_msrvtt(corpus, "train").videos) == 3
    assert len(read_msrvtt(corpus, "test").videos) == 2
    too_many = runner.invoke(app, ["demo", str(tmp_path / "demo"), "--test-clips",
                                   str(MAX_TEST_CLIPS + 1),
                                   "--generate-only"])
    assert too_many.exit_code == 2 and "--test-clips" in too_many.output


def test_demo_trains_indexes_and_leaves_a_searchable_index(tmp_path):
    """The whole demo at its smallest: corpus, one training step, `mgvr index` of the test
    clips with the trained model, the table from searching that index; then `mgvr search`
    on the demo's index works as printed."""
    from typer.testing import CliRunner

    from mgvr.cli import app

    directory = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(directory), "--train-clips", "4",
                                      "--test-clips", "6", "--epochs", "1", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "coarse_to_fine@50" in result.output and "gain over coarse" in result.output
    index = directory / "index"
    assert f"mgvr search \"a red circle moves left on a gray background\" --index {index}" \
        in result.output and f"mgvr serve --index {index}" in result.output
    config = json.loads((index / "mgvr.json").read_text())
    assert config["head_source"] == str(directory / "run" / "checkpoint")
    captions = directory / "test-videos" / "captions.csv"
    assert len(captions.read_text().splitlines()) == 1 + 6
    search = run_cli("search", "a red circle moves left", "--index", str(index), "--json")
    assert search.returncode == 0, search.stderr
    hits = json.loads(search.stdout)["hits"]
    assert {Path(hit["path"]).parent for hit in hits} == {(directory / "test-videos").resolve()}

    # Other flags over a trained run: refused before anything is rendered or trained (it was
    # resumed with the old run's options); the same flags again reuse the finished run.
    def demo(*flags):
        return CliRunner().invoke(app, ["demo", str(directory), "--threads", "1", *flags])

    head = directory / "run" / "checkpoint" / "head.safetensors"
    trained, corpus = head.read_bytes(), (directory / "corpus" / "MSRVTT_data.json").read_bytes()
    for flag, value, setting in (("--seed", "1", "seed"), ("--test-clips", "5", "test_clips")):
        flags = {"--train-clips": "4", "--test-clips": "6", "--epochs": "1", flag: value}
        other = demo(*[item for pair in flags.items() for item in pair])
        assert other.exit_code == 2, other.output
        assert f"{directory / 'run'} was trained with other demo settings ({setting})" \
            in other.output
    assert head.read_bytes() == trained
    assert (directory / "corpus" / "MSRVTT_data.json").read_bytes() == corpus
    again = demo("--train-clips", "4", "--test-clips", "6", "--epochs", "1")
    assert again.exit_code == 0, again.output
    assert head.read_bytes() == trained
    (directory / "demo-settings.json").unlink()  # as a run of an earlier mgvr left it
    old = demo("--train-clips", "4", "--test-clips", "6", "--epochs", "1")
    assert old.exit_code == 2 and "an earlier mgvr's demo" in old.output
    # Deleted as the message says, a new run with fewer test clips searches only its own.
    shutil.rmtree(directory / "run")
    fewer = demo("--train-clips", "4", "--test-clips", "4", "--epochs", "1")
    assert fewer.exit_code == 0, fewer.output
    assert "4 queries, 4 clips" in fewer.output
    assert len(list((directory / "test-videos").glob("*.mp4"))) == 4


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    """The demo rewrites DIR/index and DIR/test-videos: in a folder of someone else's, it stops
    before writing anything."""
    from typer.testing import CliRunner

    from mgvr.cli import app

    mine = tmp_path / "mine"
    (mine / "index").mkdir(parents=True)
    (mine / "index" / "notes.txt").write_text("keep")
    (mine / "test-videos").mkdir()
    (mine / "test-videos" / "holiday.mp4").write_bytes(b"not a demo video")
    for _ in range(2):
        result = CliRunner().invoke(app, ["demo", str(mine), "--train-clips", "2",
                                          "--test-clips", "2", "--generate-only"])
        assert result.exit_code == 2, result.output
        assert "holds index, test-videos not made by mgvr demo" in result.output
    assert sorted(p.name for p in mine.rglob("*")) == [
        "holiday.mp4", "index", "notes.txt", "test-videos"]


def test_a_run_left_mid_checkpoint_swap_is_resumed_or_refused_like_a_whole_one(tmp_path):
    """A kill between the checkpoint's two renames leaves only checkpoint.old: still a run."""
    from mgvr.errors import UsageError
    from mgvr.training.commands import _resume_or_record

    settings = {"epochs": 2, "seed": 0}
    assert _resume_or_record(tmp_path, settings) is False  # no run yet: recorded
    left = tmp_path / "run" / "checkpoint.old"
    left.mkdir(parents=True)
    (left / "trainer.json").write_text("{}")
    assert _resume_or_record(tmp_path, settings) is True
    with pytest.raises(UsageError, match="other demo settings \\(epochs\\)"):
        _resume_or_record(tmp_path, {"epochs": 3, "seed": 0})
