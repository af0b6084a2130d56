"""Retriever facade: coarse recall then fine rerank over an mgvr index."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["Hit", "Retriever", "SearchResult"]

# Hit and SearchResult come without torch, so `mgvr search` answered by a server stays fast.
_WHERE = {"Hit": "mgvr.retriever.results", "SearchResult": "mgvr.retriever.results",
          "Retriever": "mgvr.retriever.search"}

if TYPE_CHECKING:
    from mgvr.retriever.results import Hit, SearchResult
    from mgvr.retriever.search import Retriever


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'mgvr.retriever' has no attribute {name!r}")
