"""Indexer facade: bring an index up to date with a folder of videos.

The facade is imported on first use, so `import mgvr.indexer.decode` does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["IndexOptions", "Indexer", "RunSummary"]

if TYPE_CHECKING:
    from mgvr.indexer.pipeline import Indexer, IndexOptions, RunSummary


def __getattr__(name: str) -> object:
    if name in __all__:
        from mgvr.indexer import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mgvr.indexer' has no attribute {name!r}")
