"""Collects the encoded clips of each file and hands complete files to the writer (local and
Ray pipelines alike). A file that changed while it was decoded is left for the next run."""

from __future__ import annotations

from mgvr.indexer import discover
from mgvr.indexer.options import Progress, RunSummary
from mgvr.indexer.stages import FileFailure, ProbedFile
from mgvr.indexer.writer import EncodedClip, FileFacts, IndexWriter


class Assembly:
    def __init__(self, writer: IndexWriter, summary: RunSummary, progress: Progress) -> None:
        self.writer = writer
        self.summary = summary
        self.progress = progress
        self._clips: dict[str, list[EncodedClip]] = {}
        self._failed: set[str] = set()

    def has_failed(self, path: str) -> bool:
        return path in self._failed

    def fail(self, failure: FileFailure) -> None:
        entry = failure.entry
        if entry.path in self._failed:
            return
        self._failed.add(entry.path)
        self._clips.pop(entry.path, None)
        if not discover.still_same(entry):
            self._defer()
            return
        error = failure.error
        self.writer.fail(FileFacts(entry.path, entry.size, entry.mtime_ns, failure.content_key),
                         error.reason, error.detail)
        self.summary.failed += 1
        self.summary.failures.append((entry.path, error.reason, error.detail))
        self.progress.advance(0, failed=True)

    def add(self, probed: ProbedFile, clip: EncodedClip) -> None:
        path = probed.entry.path
        if path in self._failed:
            return
        clips = self._clips.setdefault(path, [])
        clips.append(clip)
        if len(clips) < probed.clip_count:
            return
        del self._clips[path]
        if not discover.still_same(probed.entry):
            self._defer()
            return
        info = probed.info
        self.writer.add(FileFacts(path, probed.entry.size, probed.entry.mtime_ns,
                                  probed.content_key, info.duration_s, info.width, info.height),
                        sorted(clips, key=lambda c: c.index))
        self.summary.indexed += 1
        self.progress.advance(len(clips), failed=False)

    def _defer(self) -> None:
        self.summary.deferred += 1
        self.progress.advance(0, failed=False)
