"""The small public Python API: `mgvr.Index(path).search(text)` and `.update(folder)`."""

from __future__ import annotations

import os
from pathlib import Path

from mgvr.indexer import Indexer, IndexOptions, RunSummary
from mgvr.retriever import Hit, Retriever, SearchResult
from mgvr.storage.layout import default_index_dir


class Index:
    """An mgvr index directory (`path`, else $MGVR_INDEX, else the per-user data dir)."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | None = None) -> None:
        self.path = default_index_dir(path)
        self.device = device
        self._retriever: Retriever | None = None

    def update(self, folder: str | os.PathLike, **options: object) -> RunSummary:
        """Index new and changed videos under `folder`, forget deleted ones.

        `options` are the fields of IndexOptions (model, pretrained, frames_per_clip, ...).
        """
        run = Indexer(self.path, IndexOptions(device=self.device, **options)).run(Path(folder))
        self._retriever = None
        return run

    def query(self, text: str, limit: int = 10, rerank_depth: int = 50,
              rerank: bool = True) -> SearchResult:
        """Like `search`, plus whether the text was truncated and per-stage timings."""
        if self._retriever is None:
            self._retriever = Retriever(self.path, device=self.device)
        return self._retriever.search(text, limit, rerank_depth, rerank)

    def search(self, text: str, limit: int = 10, rerank_depth: int = 50,
               rerank: bool = True) -> list[Hit]:
        return list(self.query(text, limit, rerank_depth, rerank).hits)
