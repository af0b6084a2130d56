"""A synthetic captioned video corpus, written as real mp4 files in the MSR-VTT layout.

Each clip shows a coloured shape moving across a plain background for the whole clip, and a
second, smaller shape that appears only briefly (a twelfth of the clip: 1 of 12 sampled
frames).
Captions are made from the scene:

    scene   "a red circle moves left on a gray background"       (visible in every frame)
    brief   "a green square appears briefly next to a red circle" (the brief object decides)
    training only: "a green square appears briefly", and scene + brief in one caption

A mean-pooled coarse vector dilutes the brief object over all frames; a text-gated frame score
can pick the frames that hold it. That is the case EERCF's fine stage is for, so the test split
tags every query with its kind. Test queries are unique by construction: no other test clip
matches a query's caption, so R@1 can reach 100 % and errors are the model's alone.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mgvr.errors import DecodeError, UsageError
from mgvr.indexer.decode import tool

COLOURS = {"red": (225, 35, 35), "green": (40, 200, 60), "blue": (40, 90, 240),
           "yellow": (245, 225, 30), "white": (250, 250, 250), "purple": (160, 50, 210)}
BACKGROUNDS = {"black": (12, 12, 12), "gray": (125, 125, 125), "brown": (105, 62, 22),
               "pink": (235, 160, 180)}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS = ("left", "right", "up", "down")
MOVE_WORDS = ("moves", "slides", "goes")
BRIEF_WORDS = ("appears briefly", "flashes for a moment", "shows up briefly")

FRAME_SIZE = 96  # rendered pixels; models resize to their own input size when decoding
FPS = 8
SECONDS = 3.0
MAIN_SIZE = 32  # a third of the frame: at 24/20 px the demo model learned colours only
BRIEF_SIZE = 28
# Test queries are unique by construction (see _sample_test_scenes); with these attributes 450
# test clips were drawn for each of 30 seeds, so 400 leaves a margin.
MAX_TEST_CLIPS = 400
BRIEF_SECONDS = 0.25  # a twelfth of the clip: 1 of 12 uniformly sampled frames
# Bumped when the same seed renders other videos or draws other captions.
GENERATOR = {"generator": "mgvr synthetic", "videos_version": 2, "captions_version": 2}

# A small open_clip architecture for this corpus: a ResNet image tower (open_clip's
# ModifiedResNet, 64 px frames, widths 16..128 x 4). The 48 px, 8 px-patch ViT used before
# collapsed onto the background colour (frames of one clip and clips of one background at
# cosine 1.0, "red circle" = "red square" in the text tower; loss stuck at 2.18 against
# ln(16) = 2.77), while this ResNet reached loss 0.81 in 600 steps and sees the brief object
# (ablations in docs/ARCHITECTURE.md, Evaluation). Text width = embed_dim so the temporal head
# can start from the text tower.
SYNTHETIC_ARCHITECTURE_NAME = "mgvr-synthetic-small"
SYNTHETIC_ARCHITECTURE = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 2},
}


@dataclass(frozen=True)
class Scene:
    """What one clip shows; every caption is derived from these fields."""

    colour: str
    shape: str
    direction: str
    background: str
    brief_colour: str
    brief_shape: str
    lane: float  # 0..1 offset of the main object's path across the frame
    brief_start_s: float
    brief_place: tuple[float, float]  # (along the path, side: 0 = before the lane, 1 = after)

    def scene_key(self) -> tuple[str, ...]:
        return (self.colour, self.shape, self.direction, self.background)

    def brief_key(self) -> tuple[str, ...]:
        return (self.brief_colour, self.brief_shape, self.colour, self.shape)


def scene_caption(scene: Scene, rng: random.Random) -> str:
    return (f"a {scene.colour} {scene.shape} {rng.choice(MOVE_WORDS)} {scene.direction} "
            f"on a {scene.background} background")


def brief_only_caption(scene: Scene, rng: random.Random) -> str:
    return f"a {scene.brief_colour} {scene.brief_shape} {rng.choice(BRIEF_WORDS)}"


def brief_caption(scene: Scene, rng: random.Random) -> str:
    return f"{brief_only_caption(scene, rng)} next to a {scene.colour} {scene.shape}"


def full_caption(scene: Scene, rng: random.Random) -> str:
    return (f"{scene_caption(scene, rng)} and a {scene.brief_colour} {scene.brief_shape} "
            f"{rng.choice(BRIEF_WORDS)}")


def random_scene(rng: random.Random) -> Scene:
    colour, brief_colour = rng.sample(sorted(COLOURS), 2)
    # Starts on a frame k (of 1/8 s) and covers frames k and k+1; the 12 samples take the odd
    # frames, so exactly one of the two is sampled.
    segments = round(SECONDS / BRIEF_SECONDS * 2)
    start = rng.randrange(1, segments - 2) * SECONDS / segments
    return Scene(colour, rng.choice(SHAPES), rng.choice(DIRECTIONS),
                 rng.choice(sorted(BACKGROUNDS)), brief_colour, rng.choice(SHAPES),
                 rng.uniform(0.3, 0.7), start,
                 (rng.uniform(0.15, 0.85), float(rng.random() < 0.5)))


def _shape_mask(shape: str, size: int) -> np.ndarray:
    grid = (np.arange(size) + 0.5) / size * 2 - 1  # -1..1
    x, y = np.meshgrid(grid, grid)
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
    if shape == "triangle":
        return (y <= 0.9) & (y >= 2 * np.abs(x) - 0.9)
    return (np.abs(x) <= 0.3) | (np.abs(y) <= 0.3)  # cross


def _paste(frame: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int],
           centre_x: float, centre_y: float) -> None:
    size = mask.shape[0]
    top, left = int(round(centre_y - size / 2)), int(round(centre_x - size / 2))
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, frame.shape[0]), min(left + size, frame.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    region = mask[y0 - top:y1 - top, x0 - left:x1 - left]
    frame[y0:y1, x0:x1][region] = colour


def render(scene: Scene) -> np.ndarray:
    """(T, S, S, 3) uint8 frames of the scene, T = SECONDS * FPS."""
    count = int(SECONDS * FPS)
    size = FRAME_SIZE
    main_mask, brief_mask = _shape_mask(scene.shape, MAIN_SIZE), _shape_mask(
        scene.brief_shape, BRIEF_SIZE)
    margin = MAIN_SIZE / 2
    lane = margin + scene.lane * (size - 2 * margin)
    # The brief object sits beside the main object's lane, never on it: on the side the scene
    # asks for when it fits in the frame there, else on the other (one side always fits).
    before, after = (lane - MAIN_SIZE / 2 - BRIEF_SIZE / 2 - 2,
                     lane + MAIN_SIZE / 2 + BRIEF_SIZE / 2 + 2)
    fits = [c for c in ((before, after) if scene.brief_place[1] < 0.5 else (after, before))
            if BRIEF_SIZE / 2 <= c <= size - BRIEF_SIZE / 2]
    side = fits[0]
    along = BRIEF_SIZE / 2 + scene.brief_place[0] * (size - BRIEF_SIZE)
    frames = np.empty((count, size, size, 3), np.uint8)
    for index in range(count):
        progress = index / (count - 1)
        travel = margin + progress * (size - 2 * margin)
        if scene.direction in ("left", "up"):
            travel = size - travel
        frame = frames[index]
        frame[:] = BACKGROUNDS[scene.background]
        horizontal = scene.direction in ("left", "right")
        main_x, main_y = (travel, lane) if horizontal else (lane, travel)
        _paste(frame, main_mask, COLOURS[scene.colour], main_x, main_y)
        time_s = index / FPS
        if scene.brief_start_s <= time_s < scene.brief_start_s + BRIEF_SECONDS:
            brief_x, brief_y = (along, side) if horizontal else (side, along)
            _paste(frame, brief_mask, COLOURS[scene.brief_colour], brief_x, brief_y)
    return frames


def write_mp4(frames: np.ndarray, path: Path, timeout_s: float = 60.0) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as H.264 mp4 with the real ffmpeg.

    No B-frames: every frame is then a reference frame, which mgvr's decoder never skips, so
    each sample time gets exactly its nearest frame and the brief object lands in exactly
    1 of 12 samples."""
    _, height, width, _ = frames.shape
    command = [tool("ffmpeg"), "-nostdin", "-v", "error", "-y", "-f", "rawvideo",
               "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(FPS), "-i", "pipe:",
               "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-bf", "0",
               "-pix_fmt", "yuv420p", str(path)]
    tmp = path.with_suffix(".tmp.mp4")
    command[-1] = str(tmp)
    result = subprocess.run(command, input=frames.tobytes(), capture_output=True,
                            timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise DecodeError(str(path), "encode-failed", result.stderr.decode(errors="replace")[-300:])
    tmp.replace(path)


def _sample_test_scenes(count: int, rng: random.Random) -> list[tuple[Scene, str]]:
    """Scenes with their query kind; no other scene matches a query (both directions)."""
    chosen: list[tuple[Scene, str]] = []
    scene_queries: set[tuple[str, ...]] = set()
    brief_queries: set[tuple[str, ...]] = set()
    used_scenes: set[tuple[str, ...]] = set()
    used_briefs: set[tuple[str, ...]] = set()
    for _ in range(count * 1000):
        if len(chosen) == count:
            return chosen
        scene = random_scene(rng)
        kind = "scene" if len(chosen) % 2 == 0 else "brief"
        if scene.scene_key() in scene_queries or scene.brief_key() in brief_queries:
            continue  # this clip would also match an earlier query
        if kind == "scene" and scene.scene_key() in used_scenes:
            continue
        if kind == "brief" and scene.brief_key() in used_briefs:
            continue
        (scene_queries if kind == "scene" else brief_queries).add(
            scene.scene_key() if kind == "scene" else scene.brief_key())
        used_scenes.add(scene.scene_key())
        used_briefs.add(scene.brief_key())
        chosen.append((scene, kind))
    raise UsageError(f"cannot draw {count} test clips with unique captions; use at most "
                     f"{MAX_TEST_CLIPS}")


@dataclass(frozen=True)
class CorpusSummary:
    root: Path
    train_clips: int
    test_clips: int
    written: int  # mp4 files written now (the rest existed already)


def corpus_info(root: Path) -> dict | None:
    """The `info` block of a generated corpus at ROOT, or None where there is none."""
    try:
        return json.loads((root / "MSRVTT_data.json").read_text()).get("info")
    except (OSError, ValueError, AttributeError):
        return None


def generate_corpus(root: Path, train_clips: int, test_clips: int, seed: int = 0,
                    workers: int = 2,
                    progress: Callable[[int, int], None] | None = None) -> CorpusSummary:
    """Write videos/videoN.mp4 plus MSRVTT_data.json, MSRVTT_train.9k.csv and
    MSRVTT_JSFUSION_test.csv (with an extra `kind` column: scene | brief) under `root`.
    Re-running with the same arguments keeps the mp4 files already there."""
    if train_clips <= 0 or test_clips <= 0:
        raise UsageError("--train-clips and --test-clips must be positive")
    rng = random.Random(seed)
    train = [random_scene(rng) for _ in range(train_clips)]
    test = _sample_test_scenes(test_clips, rng)
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    info = {**GENERATOR, "seed": seed, "train_clips": train_clips, "test_clips": test_clips}
    # Same scenes (captions may have changed): keep the mp4 files already written.
    previous = corpus_info(root) or {}
    reuse = all(previous.get(key) == info[key]
                for key in ("generator", "videos_version", "seed", "train_clips", "test_clips"))

    scenes = train + [scene for scene, _ in test]
    ids = [f"video{i}" for i in range(len(scenes))]
    sentences, meta = [], []
    for index, scene in enumerate(train):
        # The brief-only caption matters: in a batch of random clips the main object alone
        # tells most clips apart, so without it the brief object is never needed to match.
        for caption in (scene_caption(scene, rng), brief_only_caption(scene, rng),
                        brief_caption(scene, rng), full_caption(scene, rng)):
            sentences.append({"video_id": ids[index], "caption": caption})
    test_rows = []
    for offset, (scene, kind) in enumerate(test):
        video_id = ids[len(train) + offset]
        caption = scene_caption(scene, rng) if kind == "scene" else brief_caption(scene, rng)
        sentences.append({"video_id": video_id, "caption": caption, "kind": kind})
        test_rows.append({"key": f"ret{offset}", "vid_key": f"msr{len(train) + offset}",
                          "video_id": video_id, "sentence": caption, "kind": kind})
    for index, scene in enumerate(scenes):
        meta.append({"video_id": ids[index], "split": "train" if index < len(train) else "test",
                     **asdict(scene)})
    for number, sentence in enumerate(sentences):
        sentence["sen_id"] = number
    (root / "MSRVTT_data.json").write_text(json.dumps(
        {"info": info, "videos": meta,
         "sentences": sentences}))
    with (root / "MSRVTT_train.9k.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id"])
        writer.writerows([[video_id] for video_id in ids[:len(train)]])
    with (root / "MSRVTT_JSFUSION_test.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["key", "vid_key", "video_id", "sentence", "kind"])
        writer.writeheader()
        writer.writerows(test_rows)

    todo = [(videos / f"{video_id}.mp4", scene) for video_id, scene in zip(ids, scenes,
                                                                             strict=True)
            if not (reuse and (videos / f"{video_id}.mp4").is_file())]
    done = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in pool.map(lambda item: write_mp4(render(item[1]), item[0]), todo):
            done += 1
            if progress:
                progress(done, len(todo))
    return CorpusSummary(root, len(train), len(test), len(todo))
