"""Running the app under uvicorn on a socket bound beforehand (so port 0's real port is known
before the first request), with a time limit on requests that stall."""

from __future__ import annotations

import asyncio
import logging
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

KEEP_ALIVE_S = 5


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); raises OSError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY on accepted sockets only for those,
    # and without it every answer on a kept-alive connection waits 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _head_timeout_protocol(timeout_s: float) -> type[H11Protocol]:
    class HeadTimeoutProtocol(H11Protocol):
        """uvicorn's h11 protocol, plus a limit on how long a request line and headers may take
        to arrive. uvicorn closes idle keep-alive connections, but not one that sends part of a
        request (or nothing) and then stalls; the body has its own limit (see guard.py)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
                self._arm()  # part of a request head is in: the rest must follow in time
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(timeout_s, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutProtocol


def serve(app, sock: socket.socket, request_timeout_s: float) -> None:
    """Serve until SIGINT or SIGTERM (uvicorn handles both: running requests finish)."""
    config = uvicorn.Config(app, http=_head_timeout_protocol(request_timeout_s), lifespan="off",
                            timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=10,
                            access_log=False, log_level=logging.WARNING, server_header=False,
                            ws="none")
    uvicorn.Server(config).run(sockets=[sock])
