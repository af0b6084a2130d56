"""Client of `mgvr serve`: ask the index's running server, or say there is none (None).

Anything short of a clear answer from the right server (no file, dead pid, refused or slow
connection, another index, a server error) returns None so the caller searches in-process.
A request the server rejects as bad input raises the same error the in-process search would.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import fields
from pathlib import Path

from mgvr.errors import MgvrError
from mgvr.retriever.results import Hit, SearchResult
from mgvr.serve import discovery

CONNECT_TIMEOUT_S = 0.25
ANSWER_TIMEOUT_S = 30.0


class ServedError(MgvrError):
    """An error the server reported for this request, with the exit code it maps to."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def request(info: discovery.ServeInfo, method: str, path: str,
            body: dict | None = None) -> tuple[int, dict]:
    """One HTTP JSON exchange; raises OSError, HTTPException or ValueError when it fails."""
    connection = http.client.HTTPConnection(info.host, info.port, timeout=CONNECT_TIMEOUT_S)
    try:
        connection.connect()
        connection.sock.settimeout(ANSWER_TIMEOUT_S)
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload,
                           headers={"Content-Type": "application/json"} if payload else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def search_via_server(index_dir: Path, query: str, limit: int, rerank_depth: int, rerank: bool,
                      device: str | None = None, model: str | None = None,
                      pretrained: str | None = None) -> tuple[SearchResult, int] | None:
    """(result, the model's context length) from the index's server, or None to search here."""
    info = discovery.read(index_dir)
    if info is None or not info.alive() or (device is not None and device != info.device):
        return None
    body = {"query": query, "limit": limit, "rerank_depth": rerank_depth, "rerank": rerank,
            "index": discovery.index_key(index_dir), "model": model, "pretrained": pretrained}
    try:
        status, payload = request(info, "POST", "/search", body)
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
    names = [f.name for f in fields(Hit)]
    hits = tuple(Hit(**{name: hit[name] for name in names}) for hit in payload["hits"])
    return SearchResult(payload["query"], hits, bool(payload["query_truncated"]),
                        {k: float(v) for k, v in payload.get("timings_ms", {}).items()})


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
