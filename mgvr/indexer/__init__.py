"""Indexer facade: bring an index up to date with a folder of videos.

The facade is imported on first use; nothing here loads torch until there is work to encode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["IndexOptions", "Indexer", "RunSummary"]

if TYPE_CHECKING:
    from mgvr.indexer.options import IndexOptions, RunSummary
    from mgvr.indexer.runner import Indexer


def __getattr__(name: str) -> object:
    if name == "Indexer":
        from mgvr.indexer.runner import Indexer

        return Indexer
    if name in __all__:
        from mgvr.indexer import options

        return getattr(options, name)
    raise AttributeError(f"module 'mgvr.indexer' has no attribute {name!r}")
