"""mgvr: text-to-video retrieval over your own video collections.

    import mgvr
    index = mgvr.Index("~/my-index")
    index.update("~/videos")
    for hit in index.search("a man cooking", limit=5):
        print(hit.rank, hit.score, hit.path, hit.start_s, hit.end_s, hit.best_moment_s)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Hit", "Index", "IndexOptions", "MgvrError", "RunSummary", "SearchResult"]

# Imported on first use, so `mgvr --help` and `import mgvr.errors` do not pay for torch.
_WHERE = {"Index": "mgvr.api", "MgvrError": "mgvr.errors", "IndexOptions": "mgvr.indexer",
          "RunSummary": "mgvr.indexer", "Hit": "mgvr.retriever", "SearchResult": "mgvr.retriever"}

if TYPE_CHECKING:
    from mgvr.api import Index
    from mgvr.errors import MgvrError
    from mgvr.indexer import IndexOptions, RunSummary
    from mgvr.retriever import Hit, SearchResult


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mgvr' has no attribute {name!r}")
