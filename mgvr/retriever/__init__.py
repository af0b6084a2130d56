"""Retriever facade: coarse recall then fine rerank over an mgvr index."""

from mgvr.retriever.search import Hit, Retriever, SearchResult

__all__ = ["Hit", "Retriever", "SearchResult"]
