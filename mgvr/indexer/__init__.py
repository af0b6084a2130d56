"""Indexer facade: bring an index up to date with a folder of videos."""

from mgvr.indexer.pipeline import Indexer, IndexOptions, RunSummary

__all__ = ["IndexOptions", "Indexer", "RunSummary"]
