"""What an index run is asked to do (IndexOptions), what it did (RunSummary), and how it
reports progress (Progress). Plain data: importing this loads neither torch nor FAISS."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

DAY_S = 86_400.0


@dataclass(frozen=True)
class IndexOptions:
    model: str | None = None  # None: the index's model, or ViT-B-32 for a new index
    pretrained: str | None = None
    model_checkpoint: str | None = None  # a `mgvr train` checkpoint: its CLIP and head
    frames_per_clip: int | None = None
    clip_seconds: float | None = None
    device: str | None = None
    workers: int = max(2, min(16, os.cpu_count() or 2))  # each drives one ffmpeg process
    decode_timeout_s: float = 120.0
    # A commit writes only what it adds (a Parquet part and a small coarse segment), so a kill
    # loses at most commit_every_clips clips or commit_every_s seconds of work.
    commit_every_clips: int = 2000
    commit_every_s: float = 120.0
    retry_failed: bool = False
    wait_s: float = 0.0
    settle_seconds: float = 5.0
    # Removal safety: files that vanish are marked missing, and deleted from the index only
    # after `remove_after_s`; a run that would lose more than `max_remove` of the folder's
    # files (or finds the folder empty) removes nothing.
    max_remove: float = 0.5
    remove_after_s: float = 7 * DAY_S
    merge_budget_s: float = 60.0  # seconds of segment merging at the end of a run
    # None: a local run. "auto" (a running cluster, else a local one) or a cluster address:
    # probe, decode and encode on Ray (mgvr.distributed); this process still plans and commits.
    ray_address: str | None = None


@dataclass
class RunSummary:
    root: str
    indexed: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped_failed: int = 0
    removed: int = 0
    missing: int = 0  # newly marked missing this run (kept until remove_after_s)
    restored: int = 0  # back after being missing: kept without re-encoding
    moved: int = 0
    deferred: int = 0
    clips_added: int = 0
    commits: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # path, reason, detail
    skipped: list[tuple[str, str]] = field(default_factory=list)  # path, why not indexed
    unreadable_dirs: list[str] = field(default_factory=list)  # their files were kept
    unreadable_files: list[tuple[str, str]] = field(default_factory=list)  # (path, why): kept
    removal_refused: str | None = None  # why nothing was removed, when the guard stopped it
    stage_seconds: dict[str, float] = field(default_factory=dict)
    merges: int = 0

    @property
    def incomplete(self) -> bool:
        """Some files could not be indexed or looked at: exit code 3."""
        return bool(self.failed or self.unreadable_dirs or self.unreadable_files)

    def line(self) -> str:
        text = (f"indexed {self.indexed} files ({self.clips_added} clips), unchanged "
                f"{self.unchanged}, moved {self.moved}, removed {self.removed}, failed "
                f"{self.failed}")
        if self.missing or self.restored:
            text += f", {self.missing} newly missing, {self.restored} back"
        if self.skipped_failed:
            text += f" (+{self.skipped_failed} failed earlier, not retried)"
        if self.deferred:
            text += f", {self.deferred} still being written (next run)"
        return text + f" in {self.seconds:.1f}s"


class Progress(Protocol):
    def waiting(self, message: str) -> None: ...
    def start(self, files: int) -> None: ...
    def advance(self, clips: int, failed: bool) -> None: ...
    def committed(self, generation: int, clips: int) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def waiting(self, message: str) -> None:
        pass

    def start(self, files: int) -> None:
        pass

    def advance(self, clips: int, failed: bool) -> None:
        pass

    def committed(self, generation: int, clips: int) -> None:
        pass

    def stop(self) -> None:
        pass
