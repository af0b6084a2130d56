"""Everything mgvr asks of ffmpeg: probing files, planning clips and decoding sampled frames.

ffmpeg-python builds the decode command; both tools run as subprocesses with a timeout so a
broken file can never hang a run. ffmpeg applies the model's resize and crop itself, so only
S x S frames cross the pipe; ffmpeg also honours rotation metadata (autorotate is its default).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

import ffmpeg
import numpy as np

from mgvr.errors import DecodeError, DecoderMissingError

FFMPEG_ENV = "MGVR_FFMPEG"
FFPROBE_ENV = "MGVR_FFPROBE"
# Demuxers that read still images: a .jpg is decodable but is not a video.
IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "gif_pipe",
                 "tiff_pipe", "svg_pipe", "ppm_pipe", "pgm_pipe", "pam_pipe", "qoi_pipe"}
STILL_CODECS = {"mjpeg", "png", "bmp", "gif", "webp", "tiff"}
INPUT_PLACEHOLDER = "mgvr-input-placeholder"


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    width: int  # as displayed, after rotation
    height: int
    rotation: int  # degrees from the container's display matrix
    codec: str
    frame_rate: float = 0.0  # average frames per second; 0 when the file does not say


@dataclass(frozen=True)
class ClipSpan:
    index: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class DecodedClip:
    span: ClipSpan
    frames: np.ndarray  # (n, S, S, 3) uint8 RGB, n <= frames per clip
    frame_times: np.ndarray  # (n,) float32 seconds from the start of the video


@dataclass(frozen=True)
class FrameRecipe:
    """How to turn a video frame into model input: S x S RGB, the model's resize rule."""

    image_size: int
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


def tool(name: str) -> str:
    env = FFMPEG_ENV if name == "ffmpeg" else FFPROBE_ENV
    found = os.environ.get(env) or shutil.which(name)
    if found and not (os.path.isfile(found) and os.access(found, os.X_OK)):
        raise DecoderMissingError(f"${env} names {found}, which is not a program; point it at "
                                  f"the {name} binary, or unset it to use the one on PATH")
    if not found:
        raise DecoderMissingError(
            f"{name} not found on PATH; install FFmpeg (./setup.sh does, or `apt-get install "
            f"ffmpeg` / `brew install ffmpeg`), or point ${env} at the binary")
    return found


def _run(command: list[str], path: str, timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as e:
        raise DecodeError(path, "timeout", f"{command[0]} took over {timeout_s:.0f}s") from e


def _last_error_line(stderr: bytes, path: str) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1].replace(f"{path}: ", "")[:300] if lines else "no error output"


def _failure_reason(stderr: bytes) -> str:
    """ffmpeg says 'Decoder (codec X) not found' when this build cannot decode the stream."""
    text = stderr.decode(errors="replace").lower()
    if "decoder (codec" in text and "not found" in text or "codec not currently supported" in text:
        return "unsupported-codec"
    return "corrupt"


def probe(path: str, timeout_s: float) -> VideoInfo:
    """Read duration, display size and rotation of the first video stream."""
    if not os.access(path, os.R_OK):
        raise DecodeError(path, "permission-denied", "file is not readable")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty", "the file is empty (0 bytes)")
    # ffmpeg.probe() has no timeout, so run ffprobe directly.
    result = _run([tool("ffprobe"), "-v", "error", "-print_format", "json", "-show_format",
                   "-show_streams", path], path, timeout_s)
    if result.returncode != 0:
        if _looks_like_text(path):
            raise DecodeError(path, "not-a-video", "a text file, not a video")
        raise DecodeError(path, "corrupt", _last_error_line(result.stderr, path))
    try:
        data = json.loads(result.stdout)
    except ValueError as e:
        raise DecodeError(path, "corrupt", "ffprobe printed no readable description") from e
    fmt = data.get("format", {})
    if fmt.get("format_name") in IMAGE_FORMATS:
        raise DecodeError(path, "not-a-video", f"a still image ({fmt.get('format_name')})")
    streams = [s for s in data.get("streams", []) if s.get("codec_type") == "video"
               and not s.get("disposition", {}).get("attached_pic")]
    if not streams:
        kinds = sorted({s.get("codec_type", "?") for s in data.get("streams", [])})
        raise DecodeError(path, "no-video-stream",
                          f"streams: {', '.join(kinds) or 'none'}; nothing to index")
    stream = streams[0]
    rotation = _rotation(stream)
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if rotation % 180:
        width, height = height, width
    # The video stream's own duration first: audio may outlast the picture.
    duration = _float(stream.get("duration")) or _float(fmt.get("duration"))
    if not duration:
        duration = _duration_from_packets(path, timeout_s)
    if stream.get("codec_name") in STILL_CODECS and not duration:
        raise DecodeError(path, "not-a-video", "a single still picture")
    if not duration or duration <= 0:
        raise DecodeError(path, "zero-frames", "no video duration and no video packets")
    return VideoInfo(duration, width, height, rotation, stream.get("codec_name", "?"),
                     _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")))


def _looks_like_text(path: str) -> bool:
    """The first KiB is printable UTF-8 text (a note or a playlist named like a video)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
        text = head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def _rate(value: object) -> float:
    """ffprobe's "30000/1001" as a number; 0 for missing or "0/0"."""
    numerator, _, denominator = str(value or "").partition("/")
    try:
        rate = float(numerator) / float(denominator or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return rate if 0 < rate < 1000 else 0.0


def _float(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _rotation(stream: dict) -> int:
    for side_data in stream.get("side_data_list", []):
        if "rotation" in side_data:
            return int(round(float(side_data["rotation"]))) % 360
    rotate = stream.get("tags", {}).get("rotate")
    return int(rotate) % 360 if rotate else 0


def _duration_from_packets(path: str, timeout_s: float) -> float | None:
    """For streams whose container states no duration (some WebM/MKV): last packet end time."""
    result = _run([tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
                   "packet=pts_time,duration_time", "-of", "csv=p=0", path], path, timeout_s)
    end = None
    for line in result.stdout.decode(errors="replace").splitlines():
        parts = [_float(x) for x in line.split(",")[:2]]
        if parts and parts[0] is not None:
            candidate = parts[0] + (parts[1] or 0.0) if len(parts) > 1 else parts[0]
            end = candidate if end is None else max(end, candidate)
    return end


def plan_clips(duration_s: float, clip_seconds: float) -> list[ClipSpan]:
    """One clip for short videos; otherwise ceil(duration / clip_seconds) equal consecutive clips
    (equal lengths avoid a near-empty tail clip)."""
    count = max(1, math.ceil(duration_s / clip_seconds - 1e-9))
    length = duration_s / count
    return [ClipSpan(i, i * length, (i + 1) * length) for i in range(count)]


def group_clips(spans: list[ClipSpan], per_group: int) -> list[list[ClipSpan]]:
    """Runs of at most `per_group` consecutive clips, each decoded by one ffmpeg process."""
    return [spans[i:i + per_group] for i in range(0, len(spans), per_group)]


def sample_times(span: ClipSpan, frames: int) -> np.ndarray:
    """Centres of `frames` equal segments of the clip (uniform sampling)."""
    step = (span.end_s - span.start_s) / frames
    return (span.start_s + step * (np.arange(frames) + 0.5)).astype(np.float32)


def resize_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """open_clip's "shortest" resize then center crop, as torchvision computes them:
    the long side is truncated, the crop offset rounded. Returns (new_w, new_h, x, y)."""
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    return new_w, new_h, int(round((new_w - size) / 2)), int(round((new_h - size) / 2))


@functools.cache
def has_zscale() -> bool:
    result = subprocess.run([tool("ffmpeg"), "-hide_banner", "-filters"], capture_output=True,
                            timeout=30, stdin=subprocess.DEVNULL, check=False)
    return b" zscale " in result.stdout


def _resize(stream, width: int, height: int, interpolation: str):
    """Resize an rgb24 stream like PIL does: with zimg, PIL's bicubic kernel (b=0, c=0.5),
    horizontal pass then vertical pass, rounding to 8 bits in between as PIL does."""
    if has_zscale() and interpolation == "bicubic":
        kernel = {"filter": "bicubic", "param_a": 0, "param_b": 0.5}
        return (stream.filter("zscale", w=width, h="ih", **kernel)
                .filter("zscale", w=width, h=height, **kernel))
    flags = interpolation if interpolation in ("bicubic", "bilinear", "neighbor") else "bicubic"
    return stream.filter("scale", width, height, flags=flags)


def frame_filter(stream, info: VideoInfo, recipe: FrameRecipe):
    """Model-input frames: rgb24, S x S, resized as the model's own open_clip transform does."""
    size = recipe.image_size
    stream = stream.filter("format", "rgb24")
    if recipe.resize_mode == "squash":
        return _resize(stream, size, size, recipe.interpolation)
    if recipe.resize_mode == "longest":
        scale = size / max(info.width, info.height)
        new_w, new_h = max(1, round(info.width * scale)), max(1, round(info.height * scale))
        stream = _resize(stream, new_w, new_h, recipe.interpolation)
        return stream.filter("pad", size, size, (size - new_w) // 2, (size - new_h) // 2)
    new_w, new_h, x, y = resize_geometry(info.width, info.height, size)
    stream = _resize(stream, new_w, new_h, recipe.interpolation)
    return stream.filter("crop", size, size, x, y, exact=1)


def sampled_stream(info: VideoInfo, span: ClipSpan, frames: int,
                   skip_non_reference: bool = True, centred: bool = True):
    """ffmpeg's stream of the `frames` sampled frames of a clip, at full size (the input is
    the placeholder INPUT_PLACEHOLDER, replaced by the file's path in the command).

    The fps filter, started at the clip's start, emits for each sample time the last frame
    before it; starting half a frame interval later makes that the last frame no later than
    half an interval after the sample time, i.e. the nearest frame when none is skipped.
    Skipping non-reference frames (usually most B-frames) cuts decode work by up to ~40% on
    H.264 with B-frames, and the frames kept are exact; with x264's defaults (B-pyramid) the
    frame taken is then within 1.5 frame intervals of the sample time, further for encoders
    that leave long runs of non-reference frames. One decoder thread per process: mgvr
    already runs one ffmpeg per worker, and more threads would only compete with them.
    """
    step = (span.end_s - span.start_s) / frames
    half_frame = min(0.5 / info.frame_rate, step / 2) if info.frame_rate and centred else 0.0
    options = {"ss": f"{span.start_s + half_frame:.6f}", "threads": 1}
    if skip_non_reference:
        options["skip_frame"] = "noref"
    return (ffmpeg.input(INPUT_PLACEHOLDER, **options).video
            .filter("fps", fps=f"{1.0 / step:.9f}", eof_action="pass"))


@dataclass(frozen=True)
class _Pass:
    """One way of running ffmpeg over a clip (see decode_clip)."""

    skip_non_reference: bool
    centred: bool  # start half a frame late, so each sample takes its nearest frame


_PASSES = (_Pass(True, True), _Pass(False, True), _Pass(False, False))


def _decode_pass(path: str, info: VideoInfo, span: ClipSpan, frames: int, recipe: FrameRecipe,
                 timeout_s: float, how: _Pass) -> tuple[subprocess.CompletedProcess, bytes]:
    stream = frame_filter(sampled_stream(info, span, frames, how.skip_non_reference,
                                         how.centred), info, recipe)
    command = (stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", vframes=frames)
               .global_args("-nostdin", "-v", "error")
               .compile(cmd=tool("ffmpeg")))
    # The path goes in after ffmpeg-python built the command: as bytes, any name the file
    # system allows (even one that is not UTF-8) reaches ffmpeg unchanged.
    command = [os.fsencode(path) if arg == INPUT_PLACEHOLDER else arg for arg in command]
    result = _run(command, path, timeout_s)
    return result, result.stdout


def decode_clip(path: str, info: VideoInfo, span: ClipSpan, frames: int, recipe: FrameRecipe,
                timeout_s: float, skip_non_reference: bool = True) -> DecodedClip:
    """Decode `frames` frames sampled uniformly over the clip, resized for the model.

    Variable frame rates and odd sizes need no special handling (see sampled_stream). The first
    pass skips non-reference frames; if it gives fewer frames than asked for and ffmpeg did not
    fail, the clip is decoded again without skipping, and if that gives none (a video of one
    frame at t=0 lies before the half-frame start), once more from the clip's very start, each
    within what is left of `timeout_s`; the pass with the most frames is kept.
    `skip_non_reference=False` starts with exact decoding.
    """
    started = time.monotonic()
    size = recipe.image_size
    frame_bytes = size * size * 3
    best, first = b"", None
    for attempt, how in enumerate(_PASSES if skip_non_reference else _PASSES[1:]):
        left_s = timeout_s - (time.monotonic() - started)
        if attempt and left_s <= 0:
            break
        try:
            result, pixels = _decode_pass(path, info, span, frames, recipe, left_s, how)
        except DecodeError:
            if attempt == 0:
                raise
            break  # the frames of an earlier pass stand
        first = first or result
        if len(pixels) // frame_bytes > len(best) // frame_bytes:
            best = pixels
        count = len(best) // frame_bytes
        if result.returncode != 0 or count >= frames or (not how.skip_non_reference and count):
            break
    count = len(best) // frame_bytes
    if count == 0 and first.returncode != 0:
        raise DecodeError(path, _failure_reason(first.stderr), _last_error_line(first.stderr,
                                                                               path))
    if count == 0:
        raise DecodeError(path, "zero-frames",
                          f"no frame decoded at {span.start_s:.1f}-{span.end_s:.1f}s")
    pixels = np.frombuffer(best[:count * frame_bytes], np.uint8)
    times = sample_times(span, frames)
    return DecodedClip(span, pixels.reshape(count, size, size, 3), times[:count])


def decode_clips(path: str, info: VideoInfo, spans: list[ClipSpan], frames: int,
                 recipe: FrameRecipe, timeout_s: float) -> list[DecodedClip]:
    """decode_clip for consecutive clips of equal length in one ffmpeg run.

    Their sample times form one uniform grid, so one pass samples them all; that saves a
    process start and, above all, the decoding from the keyframe before each clip's start
    that a seek costs (up to a GOP, 10 s of video for x264's default). A clip that gets no
    frame fails the group, as it would fail alone. `timeout_s` is per clip: the group's
    clips share their summed budget.
    """
    whole = ClipSpan(spans[0].index, spans[0].start_s, spans[-1].end_s)
    decoded = decode_clip(path, info, whole, frames * len(spans), recipe,
                          timeout_s * len(spans))
    clips = []
    for number, span in enumerate(spans):
        part = slice(number * frames, (number + 1) * frames)
        if len(decoded.frames[part]) == 0:
            raise DecodeError(path, "zero-frames",
                              f"no frame decoded at {span.start_s:.1f}-{span.end_s:.1f}s")
        clips.append(DecodedClip(span, decoded.frames[part], decoded.frame_times[part]))
    return clips
