"""Search results: plain frozen dataclasses, free of torch, so a client can build them too."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SEARCH_SCHEMA = "mgvr.search/1"


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


def search_document(result: SearchResult, reranked: bool, rerank_depth: int) -> dict:
    """The `mgvr search --json` document (schema mgvr.search/1), also served by `mgvr serve`."""
    return {
        "schema": SEARCH_SCHEMA,
        "query": result.query,
        "query_truncated": result.query_truncated,
        "reranked": reranked,
        "rerank_depth": rerank_depth,
        "hits": [asdict(hit) for hit in result.hits],
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
    }
