"""Real ffmpeg on real files: probing, clip planning, sampling, preprocessing parity, failures."""

import os
import subprocess

import numpy as np
import open_clip
import pytest
from conftest import ffmpeg
from PIL import Image

from mgvr.errors import DecodeError
from mgvr.indexer import decode
from mgvr.indexer.discover import is_candidate

CLIP_MEAN = np.array(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
CLIP_STD = np.array(open_clip.OPENAI_DATASET_STD)[:, None, None]


def test_plan_clips_cuts_long_videos_into_equal_consecutive_clips():
    assert decode.plan_clips(9.0, 15.0) == [decode.ClipSpan(0, 0.0, 9.0)]
    assert decode.plan_clips(15.0, 15.0) == [decode.ClipSpan(0, 0.0, 15.0)]
    spans = decode.plan_clips(7200.0, 15.0)
    assert len(spans) == 480
    assert spans[0].start_s == 0 and spans[-1].end_s == pytest.approx(7200.0)
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(spans, spans[1:], strict=False))
    lengths = [s.end_s - s.start_s for s in decode.plan_clips(40.0, 15.0)]
    assert lengths == pytest.approx([40 / 3] * 3)


def test_sample_times_are_segment_centres():
    times = decode.sample_times(decode.ClipSpan(0, 10.0, 22.0), 12)
    assert times == pytest.approx(np.arange(12) + 10.5)


def test_probe_and_decode_every_good_video(corpus):
    recipe = decode.FrameRecipe(64)
    videos = [p for p in corpus.rglob("*") if p.is_file() and p.name != "notes.txt"]
    assert len(videos) == 10
    for path in videos:
        info = decode.probe(str(path), 30)
        assert info.duration_s > 0, path
        span = decode.plan_clips(info.duration_s, 15.0)[0]
        clip = decode.decode_clip(str(path), info, span, 12, recipe, 60)
        assert clip.frames.shape[1:] == (64, 64, 3) and clip.frames.dtype == np.uint8
        assert 10 <= len(clip.frames) <= 12, path
        assert np.all(np.diff(clip.frame_times) > 0)
        assert clip.frames.std() > 1, f"{path} decoded to a flat picture"


def test_rotation_metadata_is_honoured(corpus):
    # f_rotated.mp4 is a_testsrc.mp4's stream with a 90-degree display matrix added.
    info = decode.probe(str(corpus / "f_rotated.mp4"), 30)
    assert info.rotation in (90, 270) and (info.width, info.height) == (240, 320)
    span = decode.ClipSpan(0, 0.0, info.duration_s)
    rotated = _full_size_frames(corpus / "f_rotated.mp4", info, span, 2)
    plain_info = decode.probe(str(corpus / "a_testsrc.mp4"), 30)
    plain = _full_size_frames(corpus / "a_testsrc.mp4", plain_info, span, 2)
    assert rotated.shape[1:] == (320, 240, 3)
    turned = np.rot90(plain, k=1 if info.rotation == 90 else 3, axes=(1, 2))
    assert np.abs(rotated.astype(int) - turned.astype(int)).mean() < 1.0
    ours = decode.decode_clip(str(corpus / "f_rotated.mp4"), info, span, 2,
                              decode.FrameRecipe(64), 30)
    assert ours.frames.shape == (2, 64, 64, 3)


def _full_size_frames(path, info, span, frames):
    """The frames decode_clip picks, but at full size (no resize), for a reference transform."""
    command = (decode.sampled_stream(info, span, frames)
               .output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=frames)
               .global_args("-v", "error").compile())
    command = [str(path) if arg == decode.INPUT_PLACEHOLDER else arg for arg in command]
    raw = subprocess.run(command, capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width, 3)


def _frame_numbered_video(path, frames=125, rate=25):
    """A 64x64 H.264 file with B-frames that shows its frame number in binary: eight
    8-pixel-wide stripes, white for a 1 bit, least significant on the left."""
    bits = "255*mod(floor(N/pow(2,floor(X/8))),2)"
    ffmpeg("-f", "lavfi", "-i", f"color=c=black:s=64x64:r={rate},format=gray,geq=lum='{bits}'",
           "-frames:v", str(frames), "-c:v", "libx264", "-preset", "veryfast", "-bf", "3",
           "-pix_fmt", "yuv420p", str(path))


def _frame_numbers(frames):
    stripes = frames[:, 16:48, :, :].mean(axis=(1, 3)).reshape(len(frames), 8, 8)[:, :, 2:6]
    bits = stripes.mean(axis=2) > 128
    return (bits * (2 ** np.arange(8))).sum(axis=1)


@pytest.fixture(scope="module")
def numbered_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("numbered") / "numbered.mp4"
    _frame_numbered_video(path)
    return path


@pytest.mark.parametrize("skip", [True, False])
def test_sampled_frames_lie_near_the_sample_times(numbered_video, skip):
    path = numbered_video
    info = decode.probe(str(path), 30)
    span = decode.ClipSpan(0, 0.0, info.duration_s)
    clip = decode.decode_clip(str(path), info, span, 12, decode.FrameRecipe(64), 30,
                              skip_non_reference=skip)
    assert len(clip.frames) == 12
    offsets = _frame_numbers(clip.frames) - clip.frame_times * 25
    # Exact decoding picks the nearest frame (within half a frame interval). Skipping
    # non-reference B-frames leaves at most two in a row out (x264's B-pyramid keeps the middle
    # one of three), so the frame taken is within 1.5 intervals (60 ms at 25 fps).
    assert np.abs(offsets).max() <= (1.5 if skip else 0.5) + 1e-3, offsets


def test_consecutive_clips_decode_in_one_pass_as_they_do_one_by_one(tmp_path):
    path = tmp_path / "numbered.mp4"
    _frame_numbered_video(path, frames=250)
    info = decode.probe(str(path), 30)
    spans = decode.plan_clips(info.duration_s, 2.5)
    assert len(spans) == 4
    together = decode.decode_clips(str(path), info, spans, 5, decode.FrameRecipe(64), 30)
    assert [clip.span for clip in together] == spans
    for clip, span in zip(together, spans, strict=True):
        alone = decode.decode_clip(str(path), info, span, 5, decode.FrameRecipe(64), 30)
        assert np.array_equal(_frame_numbers(clip.frames), _frame_numbers(alone.frames))
        assert np.allclose(clip.frame_times, alone.frame_times, atol=1e-5)


def test_a_group_running_past_the_end_keeps_order_then_fails(tmp_path, monkeypatch):
    path = tmp_path / "numbered.mp4"
    _frame_numbered_video(path, frames=100)  # 4 s
    info = decode.probe(str(path), 30)
    commands = []

    def spy(command, *args):
        commands.append(command)
        return real_run(command, *args)

    real_run = decode._run
    monkeypatch.setattr(decode, "_run", spy)
    # Clips of 1.5 s: the third ends at 4.5 s, past the file's end, and comes out short.
    spans = [decode.ClipSpan(i, 1.5 * i, 1.5 * (i + 1)) for i in range(3)]
    clips = decode.decode_clips(str(path), info, spans, 5, decode.FrameRecipe(64), 30)
    assert [len(c.frames) for c in clips] == [5, 5, 4]
    numbers = np.concatenate([_frame_numbers(c.frames) for c in clips])
    assert np.all(np.diff(numbers) > 0) and numbers[-1] < 100
    # The short pass was decoded again without skipping, which found no more frames.
    assert len(commands) == 2
    assert "noref" in commands[0] and "noref" not in commands[1]
    # A clip that starts past the end gets no frame: the group fails, as the clip alone would.
    spans.append(decode.ClipSpan(3, 4.5, 6.0))
    with pytest.raises(DecodeError, match="zero-frames"):
        decode.decode_clips(str(path), info, spans, 5, decode.FrameRecipe(64), 30)


def test_clips_group_in_runs_of_at_most_n():
    spans = decode.plan_clips(75.0, 15.0)
    groups = decode.group_clips(spans, 4)
    assert [[s.index for s in g] for g in groups] == [[0, 1, 2, 3], [4]]


@pytest.mark.parametrize("size", [224, 64])
def test_frames_match_open_clip_preprocessing(sample_clips, corpus, size):
    transform = open_clip.transform.image_transform(
        size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
        std=open_clip.OPENAI_DATASET_STD, interpolation="bicubic", resize_mode="shortest")
    for path in [*sample_clips, corpus / "e_odd size.mov", corpus / "f_rotated.mp4"]:
        info = decode.probe(str(path), 30)
        span = decode.plan_clips(info.duration_s, 15.0)[0]
        ours = decode.decode_clip(str(path), info, span, 3, decode.FrameRecipe(size), 60)
        references = _full_size_frames(path, info, span, 3)
        assert len(references) == len(ours.frames)
        for mine, full in zip(ours.frames, references, strict=True):
            expected = transform(Image.fromarray(full)).numpy()
            got = (mine.transpose(2, 0, 1) / 255.0 - CLIP_MEAN) / CLIP_STD
            difference = np.abs(got - expected)
            # Normalised units (1 pixel level is about 0.015). PIL and zimg treat the image's
            # edge differently, so a border pixel on a sharp edge can differ by ~20 levels;
            # inside the border they agree within a few levels.
            assert difference.mean() < 0.005, path
            assert difference[:, 1:-1, 1:-1].max() < 0.1, path
            assert difference.max() < 0.5, path


@pytest.mark.parametrize(("name", "reason"), [
    ("audio_only.mp4", "no-video-stream"),
    ("zero_bytes.mp4", "empty"),
    ("text.mp4", "not-a-video"),
    ("random.mkv", "corrupt"),
    ("truncated.mp4", "corrupt"),
])
def test_bad_files_fail_with_a_reason(bad_files, name, reason):
    with pytest.raises(DecodeError) as failure:
        info = decode.probe(str(bad_files / name), 30)
        decode.decode_clip(str(bad_files / name), info, decode.ClipSpan(0, 0, info.duration_s),
                           4, decode.FrameRecipe(64), 30)
    assert failure.value.reason == reason
    assert name not in failure.value.detail  # the path is said once, by the caller


def test_unreadable_file_and_timeout(bad_files, corpus, tmp_path):
    import os

    if os.geteuid() != 0:
        locked = tmp_path / "locked.mp4"
        locked.write_bytes((corpus / "a_testsrc.mp4").read_bytes())
        locked.chmod(0)
        with pytest.raises(DecodeError, match="permission-denied"):
            decode.probe(str(locked), 30)
    info = decode.probe(str(corpus / "g_long.mkv"), 30)
    with pytest.raises(DecodeError) as failure:
        decode.decode_clip(str(corpus / "g_long.mkv"), info, decode.ClipSpan(0, 0, 40), 12,
                           decode.FrameRecipe(64), timeout_s=0.001)
    assert failure.value.reason == "timeout"


def test_candidates_by_extension_or_signature(corpus, bad_files):
    assert is_candidate(str(corpus / "no_extension_video"))
    assert is_candidate(str(bad_files / "text.mp4"))  # extension says video: probed, then failed
    assert not is_candidate(str(corpus / "notes.txt"))


def test_missing_decoder_is_reported_as_unsupported_codec():
    # What ffmpeg 5-7 print when the build lacks a decoder for a stream it can demux.
    stderr = b"[vist#0:0/av1] Decoder (codec av1) not found for input stream #0:0\n"
    assert decode._failure_reason(stderr) == "unsupported-codec"
    assert decode._failure_reason(b"moov atom not found\n") == "corrupt"


def test_a_video_of_one_frame_decodes_its_frame(tmp_path):
    path = tmp_path / "one_frame.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "1", "-c:v",
           "libx264", "-pix_fmt", "yuv420p", str(path))
    info = decode.probe(str(path), 30)
    clips = decode.decode_clips(str(path), info, decode.plan_clips(info.duration_s, 15), 12,
                                decode.FrameRecipe(64), 30)
    assert len(clips) == 1 and len(clips[0].frames) >= 1  # every sample takes the one frame
    assert clips[0].frames.std() > 10  # the picture, not a blank
    assert (clips[0].frames == clips[0].frames[:1]).all()


def test_a_file_name_that_is_not_utf8_decodes(tmp_path, corpus):
    name = os.fsdecode(b"bad\xff\xfe name.mp4")
    path = tmp_path / name
    path.write_bytes((corpus / "a_testsrc.mp4").read_bytes())
    info = decode.probe(str(path), 30)
    clips = decode.decode_clips(str(path), info, decode.plan_clips(info.duration_s, 15), 4,
                                decode.FrameRecipe(64), 30)
    assert len(clips[0].frames) == 4
