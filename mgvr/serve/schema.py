"""The search request, validated by pydantic whichever way it came (JSON body, multipart form
with an image, or GET parameters), and validation errors as one line."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mgvr.retriever.search import DEFAULT_LIMIT, DEFAULT_RERANK_DEPTH

MAX_LIMIT = 1000
MAX_RERANK_DEPTH = 10_000
MAX_QUERY_CHARS = 10_000
# GET /search?q=...&like=...&at=...: short names for the browser's address bar.
GET_ALIASES = {"q": "query", "after": "modified_after", "before": "modified_before"}


class SearchRequest(BaseModel):
    """One search: `query` (text), `like` (a clip id: more like its frame at `at` seconds), or
    an uploaded image; the counts and filters of `mgvr search`."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    query: str | None = Field(None, max_length=MAX_QUERY_CHARS)
    like: int | None = Field(None, ge=0)
    at: float | None = Field(None, ge=0)
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    rerank_depth: int = Field(DEFAULT_RERANK_DEPTH, ge=1, le=MAX_RERANK_DEPTH)
    rerank: bool = True
    under: str | None = None
    name: str | None = None
    modified_after: str | None = None
    modified_before: str | None = None
    index: str | None = None  # the index the client means; another one gets 409
    model: str | None = None  # refuse unless the index was built with it, as `mgvr search`
    pretrained: str | None = None


def from_get_parameters(parameters: dict[str, str]) -> dict[str, object]:
    """GET /search parameters as request fields (`rerank=0` etc. are pydantic's booleans)."""
    return {GET_ALIASES.get(key, key): value for key, value in parameters.items()
            if key != "token"}


def one_line(error: ValidationError) -> str:
    """The first problem, naming the field: `"limit": Input should be ... (got 0)`."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    got = repr(first.get("input"))
    return f"\"{field}\": {first['msg']} (got {got[:80]})"
