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
    # The clip's sampled frames: their times and the TIB gate's weight on each (which frames
    # matched; they sum to 1), for hits whose frames were scored (empty beyond the rerank
    # depth). best_frame indexes the best moment's frame (the middle one when not scored).
    best_frame: int = 0
    frame_times: tuple[float, ...] = ()
    frame_weights: tuple[float, ...] = ()


QUERY_KINDS = ("text", "image", "clip")  # a sentence, an image, a clip's frame (more like this)


@dataclass(frozen=True)
class SearchResult:
    query: str  # the text; for an image its name, for "more like this" the clip and moment
    hits: tuple[Hit, ...]
    query_truncated: bool
    timings_ms: dict[str, float] = field(default_factory=dict)
    query_kind: str = "text"
    filter: dict[str, str] = field(default_factory=dict)  # SearchFilter.to_json()


def search_document(result: SearchResult, reranked: bool, rerank_depth: int) -> dict:
    """The `mgvr search --json` document (schema mgvr.search/1), also served by `mgvr serve`."""
    return {
        "schema": SEARCH_SCHEMA,
        "query": result.query,
        "query_kind": result.query_kind,
        "filter": result.filter,
        "query_truncated": result.query_truncated,
        "reranked": reranked,
        "rerank_depth": rerank_depth,
        "hits": [asdict(hit) for hit in result.hits],
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
    }
