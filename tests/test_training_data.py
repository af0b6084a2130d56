"""Dataset readers, the frame cache and the train/eval command-line errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_video, run_cli

from mgvr.errors import EXIT_USAGE, UsageError
from mgvr.indexer.decode import FrameRecipe
from mgvr.training import frames as frames_module
from mgvr.training.datasets import load_dataset, read_captions_file, read_msrvtt
from mgvr.training.frames import FrameCache, stack_frames


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("captioned")
    make_video(root / "clips" / "a.mp4", "testsrc2", "160x120", 2)
    make_video(root / "clips" / "b.mp4", "mandelbrot", "160x120", 2)
    return root


def test_csv_captions_with_relative_paths_and_kinds(videos):
    path = videos / "captions.csv"
    path.write_text("video,caption,kind\nclips/a.mp4,a test pattern,scene\n"
                    "clips/b.mp4,a fractal,brief\nclips/a.mp4,colour bars moving,\n")
    data = read_captions_file(path)
    assert [p.name for p in data.videos] == ["a.mp4", "b.mp4"]
    assert data.captions == ("a test pattern", "a fractal", "colour bars moving")
    assert data.caption_video == (0, 1, 0)
    assert data.caption_kind == ("scene", "brief", None)
    assert data.captions_of() == [[0, 2], [1]]
    assert load_dataset(path, "test") == data


def test_jsonl_captions_with_other_column_names(videos):
    path = videos / "captions.jsonl"
    path.write_text(json.dumps({"path": "clips/b.mp4", "sentence": "a fractal"}) + "\n\n"
                    + json.dumps({"path": str(videos / "clips" / "a.mp4"), "sentence": "x"})
                    + "\n")
    data = read_captions_file(path)
    assert [p.name for p in data.videos] == ["b.mp4", "a.mp4"]
    assert data.captions == ("a fractal", "x")


@pytest.mark.parametrize("content, message", [
    ("file_name,caption\nclips/a.mp4,x\n", "no video column .* columns found: file_name, caption"),
    ("video,title\nclips/a.mp4,x\n", "no caption column"),
    ("video,caption\nclips/missing.mp4,x\n", "1 of 1 videos not found"),
    ("video,caption\n", "no rows"),
])
def test_bad_captions_files_say_what_is_wrong(videos, content, message):
    path = videos / "bad.csv"
    path.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_captions_file(path)


def test_msrvtt_layout(tmp_path, videos):
    root = tmp_path / "msrvtt"
    (root / "videos" / "all").mkdir(parents=True)
    for name, source in (("video7", "a.mp4"), ("video9", "b.mp4")):
        (root / "videos" / "all" / f"{name}.mp4").write_bytes(
            (videos / "clips" / source).read_bytes())
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": [
        {"video_id": "video9", "caption": "nine one"}, {"video_id": "video7", "caption": "seven"},
        {"video_id": "video9", "caption": "nine two"}, {"video_id": "video3", "caption": "no"}]}))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\nvideo7\nvideo9\n")
    (root / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr9,video9,the test caption\n")
    train = read_msrvtt(root, "train")
    assert [p.name for p in train.videos] == ["video7.mp4", "video9.mp4"]
    assert sorted(train.captions) == ["nine one", "nine two", "seven"]
    test = read_msrvtt(root, "test")
    assert test.captions == ("the test caption",) and test.caption_kind == (None,)
    (root / "MSRVTT_train.9k.csv").unlink()
    with pytest.raises(UsageError, match="no MSRVTT_train.9k.csv"):
        load_dataset(root, "train")


def test_frame_cache_decodes_once(videos, tmp_path, monkeypatch):
    cache = FrameCache(tmp_path / "cache", FrameRecipe(32), frames=5)
    clips = [videos / "clips" / "a.mp4", videos / "clips" / "b.mp4"]
    assert cache.fill(clips) == {}
    first = cache.load(clips[0])
    assert first.shape == (5, 32, 32, 3) and first.dtype == np.uint8

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(frames_module, "decode_clip", no_decoding)
    assert np.array_equal(cache.load(clips[0]), first)
    assert cache.fill(clips) == {}
    # Another input size is another cache entry, never the old pixels.
    with pytest.raises(AssertionError, match="decoded again"):
        FrameCache(tmp_path / "cache", FrameRecipe(48), frames=5).load(clips[0])


def test_frame_cache_reports_undecodable_videos(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    failures = FrameCache(tmp_path / "cache", FrameRecipe(32), 4).fill([bad])
    assert list(failures) == [0] and failures[0].reason == "not-a-video"


def test_stack_frames_pads_short_clips():
    batch, mask = stack_frames([np.ones((3, 8, 8, 3), np.uint8), np.ones((5, 8, 8, 3),
                                                                          np.uint8)], 4)
    assert batch.shape == (2, 4, 8, 8, 3)
    assert mask.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert batch[0, 3].sum() == 0


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, videos):
    missing = run_cli("train", str(tmp_path / "nothing.csv"), "--out", str(tmp_path / "run"))
    assert missing.returncode == EXIT_USAGE
    assert missing.stderr.strip().count("\n") == 0 and "no such folder" in missing.stderr
    bad = videos / "no_caption.csv"
    bad.write_text("video,words\nclips/a.mp4,x\n")
    result = run_cli("eval", str(bad), "--model", "x", "--pretrained", "none")
    assert result.returncode == EXIT_USAGE and "no caption column" in result.stderr
    assert "Traceback" not in result.stderr
