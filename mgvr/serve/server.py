"""The `mgvr serve` HTTP JSON API on localhost: a warm Retriever behind three endpoints.

    GET  /health            {"status": "ok", "pid", "index"}
    GET  /status            index, generation, model, device, coarse layout, catalog counts,
                            queries served, uptime
    POST /search            {"query", "limit"?, "rerank_depth"?, "rerank"?, "index"?, "model"?,
                             "pretrained"?} -> the `mgvr search --json` document
                            (schema mgvr.search/1) plus "context_length"
    GET  /search?q=TEXT&limit=N&rerank_depth=N&rerank=0|1   the same, for curl

Errors answer {"error": message, "exit_code": n}: 400 for bad input (exit code 2 as the CLI),
409 when "index" names another index, 404 for an unknown path, 500 for anything else.
Searches are served one at a time (the retriever holds one SQLite connection and swaps its
FAISS index when a new generation is committed); /health never waits for them.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from mgvr.errors import MgvrError, UsageError
from mgvr.retriever.results import search_document
from mgvr.retriever.search import (
    DEFAULT_LIMIT,
    DEFAULT_RERANK_DEPTH,
    Retriever,
)
from mgvr.serve import discovery

MAX_BODY_BYTES = 1 << 20


class SearchService:
    """A warm retriever and the counters /status reports."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever
        self.index = discovery.index_key(retriever.layout.root)
        self.started_at = time.time()
        self.queries_served = 0
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the model, the coarse index and the first sidecars before the first request."""
        with self._lock:
            self.retriever.prefetch()
            self.retriever.search("warm up", limit=1)

    def search(self, request: dict) -> dict:
        query = request.get("query")
        if not isinstance(query, str):
            raise UsageError("the request needs a \"query\" string")
        if request.get("index") not in (None, self.index):
            raise WrongIndex(f"this server serves {self.index}, not {request['index']}")
        self.retriever.config.model.check_request(self.retriever.layout.root,
                                                  request.get("model"), request.get("pretrained"))
        limit = _count(request, "limit", DEFAULT_LIMIT)
        rerank_depth = _count(request, "rerank_depth", DEFAULT_RERANK_DEPTH)
        rerank = request.get("rerank", True)
        if not isinstance(rerank, bool):
            raise UsageError("\"rerank\" must be true or false")
        with self._lock:
            result = self.retriever.search(query, limit, rerank_depth, rerank)
            self.queries_served += 1
        return {**search_document(result, rerank, rerank_depth),
                "context_length": self.retriever.config.model.context_length}

    def status(self) -> dict:
        with self._lock:
            status = self.retriever.status()
        return {**status, "pid": os.getpid(), "queries_served": self.queries_served,
                "uptime_s": round(time.time() - self.started_at, 3)}

    def health(self) -> dict:
        return {"status": "ok", "pid": os.getpid(), "index": self.index}


class WrongIndex(MgvrError):
    """The request was meant for another index."""


def _count(request: dict, key: str, default: int) -> int:
    value = request.get(key, default)
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"\"{key}\" must be a positive integer, not {value!r}")
    return value  # the retriever refuses non-positive counts with the CLI's message


def _query_parameters(query: str) -> dict:
    """GET /search?q=...&limit=...&rerank=0 -> the POST body's fields."""
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    request: dict = {k: params[k] for k in ("limit", "rerank_depth", "index") if k in params}
    if "q" in params or "query" in params:
        request["query"] = params.get("q", params.get("query"))
    if "rerank" in params:
        request["rerank"] = params["rerank"].lower() not in ("0", "false", "no")
    return request


class Handler(BaseHTTPRequestHandler):
    service: SearchService  # set on the subclass made by make_server
    server_version = "mgvr"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a server started from cron or a shell should not chatter per request."""

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, route, *args) -> None:
        try:
            self._answer(200, route(*args))
        except WrongIndex as e:
            self._answer(409, {"error": str(e), "exit_code": e.exit_code})
        except UsageError as e:
            self._answer(400, {"error": str(e), "exit_code": e.exit_code})
        except MgvrError as e:
            self._answer(500, {"error": str(e), "exit_code": e.exit_code})
        except Exception as e:  # a server keeps serving; the client falls back in-process
            self._answer(500, {"error": f"{type(e).__name__}: {e}", "exit_code": 1})

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        routes = {"/health": self.service.health, "/status": self.service.status}
        if url.path in routes:
            self._dispatch(routes[url.path])
        elif url.path == "/search":
            self._dispatch(self.service.search, _query_parameters(url.query))
        else:
            self._answer(404, {"error": f"no endpoint {url.path}; try /search, /status or "
                                        "/health", "exit_code": 2})

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/search":
            self._answer(404, {"error": f"no endpoint POST {self.path}; POST /search",
                               "exit_code": 2})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            self._answer(400, {"error": "POST /search needs a JSON body", "exit_code": 2})
            return
        try:
            request = json.loads(self.rfile.read(length))
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._answer(400, {"error": f"the body is not a JSON object ({e})", "exit_code": 2})
            return
        self._dispatch(self.service.search, request)


def make_server(service: SearchService, port: int = 0) -> ThreadingHTTPServer:
    """Bind to localhost (port 0: any free port); call serve_forever() on the result."""
    handler = type("BoundHandler", (Handler,), {"service": service})
    server = ThreadingHTTPServer((discovery.HOST, port), handler)
    server.daemon_threads = True
    return server
