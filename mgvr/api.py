"""The small public Python API: `mgvr.Index(path).search(text)`, `.search_image(image)` and
`.update(folder)`."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np

from mgvr.indexer import Indexer, IndexOptions, RunSummary
from mgvr.retriever import Hit, Retriever, SearchResult
from mgvr.retriever.filters import SearchFilter
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

    def _searcher(self) -> Retriever:
        if self._retriever is None:
            self._retriever = Retriever(self.path, device=self.device)
        return self._retriever

    def query(self, text: str, limit: int = 10, rerank_depth: int = 50, rerank: bool = True,
              *, under: str | os.PathLike | None = None, name: str | None = None,
              modified_after: str | datetime.date | None = None,
              modified_before: str | datetime.date | None = None) -> SearchResult:
        """Like `search`, plus whether the text was truncated and per-stage timings."""
        search_filter = SearchFilter.parse(under, name, modified_after, modified_before)
        return self._searcher().search(text, limit, rerank_depth, rerank, search_filter)

    def search(self, text: str, limit: int = 10, rerank_depth: int = 50, rerank: bool = True,
               **filters: object) -> list[Hit]:
        """Clips matching the text, best first. Filters: `under` (a folder), `name` (part of
        the file name), `modified_after` / `modified_before` (a date or datetime, or an ISO
        string; naive means local time)."""
        return list(self.query(text, limit, rerank_depth, rerank, **filters).hits)

    def search_image(self, image: str | os.PathLike | bytes | np.ndarray, limit: int = 10,
                     rerank_depth: int = 50, rerank: bool = True, *,
                     under: str | os.PathLike | None = None, name: str | None = None,
                     modified_after: str | datetime.date | None = None,
                     modified_before: str | datetime.date | None = None) -> list[Hit]:
        """Clips that look like the image (a file, its bytes, or an (H, W, 3) uint8 RGB array),
        with the same filters as `search`."""
        search_filter = SearchFilter.parse(under, name, modified_after, modified_before)
        return list(self._searcher().search_image(image, limit, rerank_depth, rerank,
                                                  search_filter).hits)
