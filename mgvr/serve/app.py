"""The `mgvr serve` HTTP app: the JSON API and the web page, built by `create_app(service)`.

    GET  /                          the web page (assets under /static, served from the package)
    GET  /health                    {"status": "ok", "pid", "index"}
    GET  /status                    index, generation, model, device, coarse layout, catalog
                                    counts, files, failed files, recent runs, size on disk,
                                    queries served, uptime
    POST /search                    JSON {"query" | "like" (+ "at"), "limit"?, "rerank_depth"?,
                                    "rerank"?, "under"?, "name"?, "modified_after"?,
                                    "modified_before"?, "index"?, "model"?, "pretrained"?},
                                    or a multipart form of the same fields plus an "image" file
                                    -> the `mgvr search --json` document (mgvr.search/1) plus
                                    "context_length" and each hit's "video" ("ok" or "gone")
    GET  /search?q=TEXT&...         the same fields as parameters (q, like, at, after, before)
    GET  /clips/{clip_id}/frames    the clip's frames as one image (WebP; JPEG in older
                                    indexes), square tiles side by side in sample order (made
                                    at index time; cached by browsers)
    GET  /clips/{clip_id}/video     the clip's video file, with HTTP Range (206) for seeking

Errors answer {"error": one line, "exit_code": n}: 400 bad input (exit code 2, as the CLI),
401 no token, 403 not a loopback Host, 404 unknown clip, path or gone video (with "reason"),
405 another method, 408 a stalled body, 409 another index, 413 too large, 500 otherwise.
Routes take clip ids, never paths: a file is served only when the catalog lists it.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.staticfiles import StaticFiles

from mgvr.errors import MgvrError, UsageError
from mgvr.serve import schema
from mgvr.serve.guard import Guard
from mgvr.serve.service import ImageUpload, NotFound, SearchService, WrongIndex

STATIC = Path(__file__).parent / "static"
MAX_FORM_FIELDS = 30


def _error(status: int, message: str, exit_code: int = 2, headers: dict | None = None,
           **extra: object) -> JSONResponse:
    return JSONResponse({"error": message, "exit_code": exit_code, **extra}, status, headers)


def create_app(service: SearchService, token: str | None = None,
               stall_timeout_s: float = 10.0) -> FastAPI:
    """The app over `service`; `token` (required of every request when set), and how long a
    request body may pause before the request is dropped."""
    app = FastAPI(title="mgvr", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.service = service
    app.add_middleware(Guard, token=token, stall_timeout_s=stall_timeout_s)
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return service.health()

    @app.get("/status")
    async def status() -> dict:
        return await service.run(service.status)

    @app.get("/search")
    async def search_get(request: Request) -> dict:
        return await _search(service, schema.from_get_parameters(dict(request.query_params)))

    @app.post("/search")
    async def search_post(request: Request) -> dict:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            fields, image = await _form(request)
            return await _search(service, fields, image)
        body = await request.body()
        if not body.strip():
            raise UsageError("POST /search needs a JSON body, e.g. {\"query\": \"a man cooking\"}")
        try:
            fields = json.loads(body)
        except ValueError as e:
            raise UsageError(f"the body is not JSON ({e})") from None
        if not isinstance(fields, dict):
            raise UsageError("the body must be a JSON object, e.g. {\"query\": \"a man cooking\"}")
        return await _search(service, fields)

    @app.get("/clips/{clip_id}/frames")
    async def frames(clip_id: int) -> Response:
        sprite, media_type = await service.run(service.sprite, clip_id)
        # A clip id is never reused and its frames never change: the browser may keep them.
        return Response(sprite, media_type=media_type,
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})

    @app.get("/clips/{clip_id}/video")
    async def video(clip_id: int) -> FileResponse:
        path = await service.run(service.video_path, clip_id)
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _search(service: SearchService, fields: dict,
                  image: ImageUpload | None = None) -> dict:
    try:
        request = schema.SearchRequest.model_validate(fields)
    except ValidationError as e:
        raise UsageError(schema.one_line(e)) from None
    return await service.run(service.search, request, image)


async def _form(request: Request) -> tuple[dict[str, str], ImageUpload | None]:
    """A multipart form's text fields and its "image" file, if any."""
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    fields, image = {}, None
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields[key] = value
        elif key == "image":
            image = ImageUpload(value.filename or "image", await value.read())
        else:
            raise UsageError(f"unexpected file field {key!r}; send the picture as \"image\"")
    if image is not None and not image.content:
        raise UsageError(f"the uploaded image {image.name!r} is empty")
    return fields, image


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UsageError)
    async def usage(request: Request, error: UsageError) -> JSONResponse:
        return _error(400, str(error), error.exit_code)

    @app.exception_handler(WrongIndex)
    async def wrong_index(request: Request, error: WrongIndex) -> JSONResponse:
        return _error(409, str(error), error.exit_code)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, error: NotFound) -> JSONResponse:
        return _error(404, str(error), reason=error.reason)

    @app.exception_handler(MgvrError)
    async def failed(request: Request, error: MgvrError) -> JSONResponse:
        return _error(500, str(error), error.exit_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        if any(problem["loc"][:1] == ("path",) for problem in error.errors()):
            return _error(404, f"no such clip: {request.url.path}", reason="no-clip")
        return _error(400, schema.one_line(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        path = request.url.path
        if error.status_code == 404:
            message = (f"no endpoint {path}; try /, /search, /status or /health"
                       if not path.startswith("/static/") else f"no such file {path}")
        elif error.status_code == 405:
            allowed = _allowed_methods(request)
            message = f"{request.method} is not supported on {path}; use {' or '.join(allowed)}"
            return _error(405, message, headers={"Allow": ", ".join(allowed)})
        else:
            message = str(error.detail)
        return _error(error.status_code, message, headers=error.headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or {"GET"}
    return sorted(methods - {"HEAD"}) or ["GET"]
