"""Search results: plain frozen dataclasses, free of torch, so a client can build them too."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float  # fine score when reranked, else the coarse score
    path: str
    start_s: float
    end_s: float
    best_moment_s: float  # time of the frame the TIB gate weighs most
    clip_id: int
    coarse_score: float
    reranked: bool


@dataclass(frozen=True)
class SearchResult:
    query: str
    hits: tuple[Hit, ...]
    query_truncated: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
