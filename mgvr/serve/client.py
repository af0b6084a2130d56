"""Client of `mgvr serve`: ask the index's running server, or say there is none (None).

Anything short of a clear answer from the right server (no file, dead pid, refused or slow
connection, another index, a server error) returns None so the caller searches in-process.
A request the server rejects as bad input raises the same error the in-process search would.
"""

from __future__ import annotations

import http.client
import json
import secrets
from dataclasses import dataclass, fields
from pathlib import Path

from mgvr.errors import MgvrError
from mgvr.retriever.filters import SearchFilter
from mgvr.retriever.results import Hit, SearchResult
from mgvr.serve import discovery

CONNECT_TIMEOUT_S = 0.25
ANSWER_TIMEOUT_S = 30.0


class ServedError(MgvrError):
    """An error the server reported for this request, with the exit code it maps to."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ServedSearch:
    """One `mgvr search` as a request: a text query, or an image (file name, bytes)."""

    query: str | None
    image: tuple[str, bytes] | None
    limit: int
    rerank_depth: int
    rerank: bool
    search_filter: SearchFilter = SearchFilter()
    model: str | None = None
    pretrained: str | None = None

    def fields(self, index: str) -> dict[str, object]:
        """The request's fields (POST /search), `index` naming the index it is meant for."""
        values = {"query": self.query, "limit": self.limit, "rerank_depth": self.rerank_depth,
                  "rerank": self.rerank, "index": index, "model": self.model,
                  "pretrained": self.pretrained, **self.search_filter.to_json()}
        return {key: value for key, value in values.items() if value is not None}


def multipart(values: dict[str, object], file_field: str, filename: str,
              content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body: each value as a text field, then one file -> (body, type)."""
    boundary = f"mgvr-{secrets.token_hex(16)}"
    safe_name = "".join(c if c.isprintable() and c not in '"\\' else "_" for c in filename)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
             f"{json.dumps(value) if isinstance(value, bool) else value}\r\n".encode()
             for key, value in values.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{safe_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(info: discovery.ServeInfo, method: str, path: str, body: dict | None = None,
            raw: tuple[bytes, str] | None = None) -> tuple[int, dict]:
    """One HTTP exchange (a JSON body, or `raw` (bytes, content type)) answered with JSON;
    raises OSError, HTTPException or ValueError when it fails."""
    connection = http.client.HTTPConnection(info.connect_host, info.port,
                                            timeout=CONNECT_TIMEOUT_S)
    try:
        connection.connect()
        connection.sock.settimeout(ANSWER_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {info.token}"} if info.token else {}
        payload = None
        if raw is not None:
            payload, headers["Content-Type"] = raw
        elif body is not None:
            payload, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def search_via_server(index_dir: Path, search: ServedSearch, device: str | None = None
                      ) -> tuple[SearchResult, int] | None:
    """(result, the model's context length) from the index's server, or None to search here."""
    info = discovery.read(index_dir)
    if info is None or not info.alive() or (device is not None and device != info.device):
        return None
    values = search.fields(discovery.index_key(index_dir))
    try:
        if search.image is None:
            status, payload = request(info, "POST", "/search", values)
        else:
            status, payload = request(info, "POST", "/search",
                                      raw=multipart(values, "image", *search.image))
    except (OSError, http.client.HTTPException, ValueError):
        return None
    if status == 400 and isinstance(payload.get("error"), str):
        raise ServedError(payload["error"], int(payload.get("exit_code", 2)))
    if status != 200:
        return None
    try:
        return result_from_json(payload), int(payload["context_length"])
    except (KeyError, TypeError, ValueError):
        return None


def result_from_json(payload: dict) -> SearchResult:
    """The inverse of the `mgvr.search/1` JSON: a SearchResult with Hit objects."""
    hits = tuple(Hit(**{f.name: _tuples(hit[f.name]) for f in fields(Hit) if f.name in hit})
                 for hit in payload["hits"])
    return SearchResult(payload["query"], hits, bool(payload["query_truncated"]),
                        {k: float(v) for k, v in payload.get("timings_ms", {}).items()},
                        payload.get("query_kind", "text"), payload.get("filter", {}))


def _tuples(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def running_server(index_dir: Path) -> discovery.ServeInfo | None:
    """The server already answering for this index, if any."""
    info = discovery.read(index_dir)
    if info is None or not info.alive():
        return None
    try:
        status, payload = request(info, "GET", "/health")
    except (OSError, http.client.HTTPException, ValueError):
        return None
    same = status == 200 and payload.get("index") == discovery.index_key(index_dir)
    return info if same else None
