"""What every request passes before a route sees it: who may ask, and how big and how slow a
request body may be. A plain ASGI middleware around the app, answering refusals itself with
the API's one-line JSON errors.

- Token: a server reachable beyond loopback has a token; every request carries it as
  `Authorization: Bearer TOKEN`, a `?token=TOKEN` parameter (the URL `mgvr serve` prints; the
  answer then sets it as a cookie, so the page's images and video carry it), or that cookie.
  Anything else gets 401.
- Host: a loopback-only server answers only requests addressed to a loopback name, so a web
  page elsewhere cannot reach it through DNS rebinding (403).
- Every answer says: no framing by other sites, no content sniffing, no Referer (the URL
  may carry the token), and a content security policy that allows only this server's own
  scripts, styles, images and media.
- Body: read in full before the route runs, up to 1 MiB (20 MiB for a multipart image
  upload; 413 past that, refused from Content-Length before reading when it says so), with at
  most `stall_timeout_s` between two pieces of it (408).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

JSON_LIMIT = 1 << 20
UPLOAD_LIMIT = 20 << 20
UPLOAD_OVERHEAD = 64 << 10  # the multipart framing and the form's text fields
TOKEN_COOKIE = "mgvr_token"
LOOPBACK_NAMES = {"127.0.0.1", "localhost", "::1", "[::1]"}
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; "
                                  b"media-src 'self'; object-src 'none'; frame-ancestors 'none'"),
]


async def send_error(send, status: int, message: str, headers: list | None = None) -> None:
    body = json.dumps({"error": message, "exit_code": 2}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _with_headers(send, extra: list[tuple[bytes, bytes]]):
    """`send` that adds these headers to the response."""
    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[:host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    def __init__(self, app, token: str | None, stall_timeout_s: float) -> None:
        self.app = app
        self.token = token
        self.stall_timeout_s = stall_timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send, SECURITY_HEADERS)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is None:
            if _hostname(headers.get("host", "")).lower() not in LOOPBACK_NAMES:
                await send_error(send, 403, f"this server answers on 127.0.0.1 only, not as "
                                            f"{headers.get('host', '(no Host header)')!r}")
                return
        else:
            given, from_url = self._token_of(scope, headers)
            if not hmac.compare_digest((given or "").encode(), self.token.encode()):
                await send_error(send, 401, "this server needs its token: open the URL "
                                            "`mgvr serve` printed (with ?token=...), or send "
                                            "Authorization: Bearer TOKEN",
                                 [(b"www-authenticate", b"Bearer")])
                return
            if from_url:
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                send = _with_headers(send, [(b"set-cookie", cookie.encode("latin-1"))])
        if scope["method"] in ("POST", "PUT", "PATCH"):
            receive = await self._buffered_body(headers, receive, send)
            if receive is None:
                return
        await self.app(scope, receive, send)

    def _token_of(self, scope, headers: dict[str, str]) -> tuple[str | None, bool]:
        """(the token the request carries, whether it came in the URL)."""
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            return bearer[7:].strip(), False
        url = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        if url:
            return url[-1], True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header carries no token
            return None, False
        morsel = cookie.get(TOKEN_COOKIE)
        return (morsel.value if morsel else None), False

    async def _buffered_body(self, headers: dict[str, str], receive, send):
        """The whole body read within the limits, as a new `receive`; None when refused."""
        upload = headers.get("content-type", "").lower().startswith("multipart/form-data")
        limit = UPLOAD_LIMIT + UPLOAD_OVERHEAD if upload else JSON_LIMIT
        what = "an image upload" if upload else "a JSON body"
        cap = f"{UPLOAD_LIMIT >> 20} MiB" if upload else f"{JSON_LIMIT >> 20} MiB"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:  # h11 refuses one that is no number
            await send_error(send, 413, f"{what} may be at most {cap}, this one is "
                                        f"{int(declared)} bytes")
            return None
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), self.stall_timeout_s)
            except asyncio.TimeoutError:
                await send_error(send, 408, f"the request body stalled: {size} bytes came, "
                                            f"then nothing for {self.stall_timeout_s:g} s")
                return None
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                await send_error(send, 413, f"{what} may be at most {cap}")
                return None
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: waits for the disconnect

        return replay
