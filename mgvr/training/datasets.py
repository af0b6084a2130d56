"""Captioned video sets: MSR-VTT as researchers keep it on disk, or a CSV/JSONL captions file.

MSR-VTT layout (CLIP4Clip / X-Pool conventions):
    ROOT/MSRVTT_data.json            {"sentences": [{"video_id", "caption"}, ...], ...}
    ROOT/MSRVTT_train.9k.csv         column video_id: the training videos
    ROOT/MSRVTT_JSFUSION_test.csv    columns key, vid_key, video_id, sentence: the 1k-A test
    ROOT/videos/all/videoN.mp4, ROOT/videos/videoN.mp4 or ROOT/videoN.mp4

Captions file: `.csv` with a header, or `.jsonl` with one object per line; a video column
(video, video_path, path or file; relative paths are relative to the file) and a caption
column (caption, sentence or text). An optional `kind` column tags captions (e.g. brief), and
evaluation then also reports each kind on its own.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mgvr.errors import UsageError

MSRVTT_CAPTIONS = "MSRVTT_data.json"
MSRVTT_TRAIN = "MSRVTT_train.9k.csv"
MSRVTT_TEST = "MSRVTT_JSFUSION_test.csv"
VIDEO_COLUMNS = ("video", "video_path", "path", "file")
CAPTION_COLUMNS = ("caption", "sentence", "text")
KIND_COLUMN = "kind"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class CaptionedVideos:
    """Videos and their captions; caption i describes videos[caption_video[i]]."""

    videos: tuple[Path, ...]
    captions: tuple[str, ...]
    caption_video: tuple[int, ...]
    caption_kind: tuple[str | None, ...]
    source: str  # where it came from, for messages

    def captions_of(self) -> list[list[int]]:
        """Caption indices per video."""
        per_video: list[list[int]] = [[] for _ in self.videos]
        for caption, video in enumerate(self.caption_video):
            per_video[video].append(caption)
        return per_video

    def subset(self, keep_videos: Iterable[int]) -> CaptionedVideos:
        """Only the given videos (in that order) and their captions."""
        order = list(keep_videos)
        new_index = {old: new for new, old in enumerate(order)}
        rows = [i for i, video in enumerate(self.caption_video) if video in new_index]
        return CaptionedVideos(tuple(self.videos[i] for i in order),
                               tuple(self.captions[i] for i in rows),
                               tuple(new_index[self.caption_video[i]] for i in rows),
                               tuple(self.caption_kind[i] for i in rows), self.source)


def _build(pairs: list[tuple[Path, str, str | None]], source: str) -> CaptionedVideos:
    if not pairs:
        raise UsageError(f"{source}: no captions found; check the file's rows")
    index: dict[Path, int] = {}
    for video, _, _ in pairs:
        index.setdefault(video, len(index))
    missing = [video for video in index if not video.is_file()]
    if missing:
        raise UsageError(f"{source}: {len(missing)} of {len(index)} videos not found (first: "
                         f"{missing[0]}); fix the paths or the video folder")
    return CaptionedVideos(tuple(index), tuple(caption for _, caption, _ in pairs),
                           tuple(index[video] for video, _, _ in pairs),
                           tuple(kind for _, _, kind in pairs), source)


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{path}: cannot read ({e})") from e


def _require(columns: Iterable[str], wanted: tuple[str, ...], path: Path, what: str) -> str:
    present = list(columns)
    for name in wanted:
        if name in present:
            return name
    raise UsageError(f"{path}: no {what} column (one of {', '.join(wanted)}); columns found: "
                     f"{', '.join(present) or 'none'}")


def _msrvtt_video_dir(root: Path, first_id: str) -> Path:
    for folder in (root / "videos" / "all", root / "videos", root):
        if (folder / f"{first_id}.mp4").is_file():
            return folder
    raise UsageError(f"{root}: {first_id}.mp4 not found in videos/all/, videos/ or the root; "
                     "put the MSR-VTT videos there")


def _read_msrvtt_csv(root: Path, path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of one of MSR-VTT's CSV files, which must exist, be non-empty and have `columns`."""
    if not path.is_file():
        raise UsageError(f"{root}: no {path.name}; not an MSR-VTT folder")
    rows = _read_csv(path)
    if not rows:
        raise UsageError(f"{path}: no rows")
    for column in columns:
        _require(rows[0], (column,), path, column)
    return rows


def read_msrvtt(root: Path, split: str) -> CaptionedVideos:
    """The train (9k videos, all their captions) or test (JSFUSION 1k-A pairs) split."""
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'; choose train or test")
    if split == "test":
        path = root / MSRVTT_TEST
        rows = _read_msrvtt_csv(root, path, ("video_id", "sentence"))
        folder = _msrvtt_video_dir(root, rows[0]["video_id"])
        return _build([(folder / f"{row['video_id']}.mp4", row["sentence"],
                        row.get(KIND_COLUMN) or None) for row in rows], str(path))
    ids_path, captions_path = root / MSRVTT_TRAIN, root / MSRVTT_CAPTIONS
    rows = _read_msrvtt_csv(root, ids_path, ("video_id",))
    if not captions_path.is_file():
        raise UsageError(f"{root}: no {captions_path.name}; not an MSR-VTT folder")
    wanted = {row["video_id"]: i for i, row in enumerate(rows)}
    try:
        sentences = json.loads(captions_path.read_text(encoding="utf-8"))["sentences"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{captions_path}: expected JSON with a 'sentences' list ({e})") from e
    folder = _msrvtt_video_dir(root, rows[0]["video_id"])
    pairs = sorted(((wanted[s["video_id"]], s["caption"], s.get(KIND_COLUMN))
                    for s in sentences if s.get("video_id") in wanted), key=lambda p: p[0])
    return _build([(folder / f"{rows[i]['video_id']}.mp4", caption, kind)
                   for i, caption, kind in pairs], str(captions_path))


def read_captions_file(path: Path) -> CaptionedVideos:
    """A `.csv` or `.jsonl` file of (video, caption[, kind]) rows."""
    if not path.is_file():
        raise UsageError(f"{path}: no such captions file")
    if path.suffix.lower() == ".csv":
        rows = _read_csv(path)
        if not rows:
            raise UsageError(f"{path}: no rows under the header")
        columns = list(rows[0])
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{path}: cannot read ({e})") from e
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UsageError(f"{path}:{number}: not a JSON object ({e})") from e
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{number}: not a JSON object")
            rows.append(row)
        if not rows:
            raise UsageError(f"{path}: no rows")
        columns = sorted({key for row in rows for key in row})
    else:
        raise UsageError(f"{path}: captions file must end in .csv or .jsonl")
    video_column = _require(columns, VIDEO_COLUMNS, path, "video")
    caption_column = _require(columns, CAPTION_COLUMNS, path, "caption")
    pairs = []
    for number, row in enumerate(rows, start=1):
        video, caption = row.get(video_column), row.get(caption_column)
        if not video or not caption or not str(caption).strip():
            raise UsageError(f"{path}: row {number} has no {video_column} or {caption_column}")
        kind = row.get(KIND_COLUMN)
        pairs.append(((path.parent / str(video)).resolve(), str(caption),
                      str(kind) if kind else None))
    return _build(pairs, str(path))


def load_dataset(data: Path, split: str) -> CaptionedVideos:
    """A folder in the MSR-VTT layout (split train or test), or a captions file (all rows)."""
    data = Path(data).expanduser()
    if data.is_dir():
        return read_msrvtt(data, split)
    if data.exists():
        return read_captions_file(data)
    raise UsageError(f"{data}: no such folder or captions file; pass an MSR-VTT folder or a "
                     ".csv/.jsonl captions file")
