"""The `mgvr serve` command, registered on the CLI app by `register(app)`."""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import socket
import time
from typing import Annotated

import typer

from mgvr.cli_common import Device, IndexPath, fail, set_torch_threads
from mgvr.errors import MgvrError, UsageError


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # after uvicorn's graceful stop: unwinds to the cleanup below


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_workers() -> int:
    return max(2, min(8, os.cpu_count() or 2))


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        index_dir: IndexPath = None,
        host: Annotated[str, typer.Option(
            help="Address to listen on. Anything but loopback (e.g. 0.0.0.0) needs a token: "
                 "--token, or one is generated and printed in the URL.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(
            help="TCP port; 0 picks a free one (recorded in <index>/serve.json).")] = 0,
        token: Annotated[str | None, typer.Option(
            envvar="MGVR_TOKEN", help="Secret every request must carry (as ?token=, a cookie "
            "or Authorization: Bearer). Default: none on loopback, generated otherwise.",
            show_default=False)] = None,
        open_browser: Annotated[bool, typer.Option(
            "--open", help="Open the web page in the default browser.")] = False,
        device: Device = None,
        threads: Annotated[int, typer.Option(
            help="CPU threads torch uses per search (set once at start). Several searches run "
                 "at once, so 1 gives the most searches per second.")] = 1,
        workers: Annotated[int | None, typer.Option(
            help="Searches answered at the same time. Default: the CPU count, 2 to 8.",
            show_default=False)] = None,
        request_timeout: Annotated[float, typer.Option(
            help="Seconds a request may take to arrive (its head, or between two pieces of "
                 "its body) before its connection is dropped.")] = 10.0,
    ) -> None:
        """Serve the web page and the HTTP JSON API, with the model and index kept warm.

        `mgvr search` on the same index uses the server when it runs (see README, Web UI).
        """
        from mgvr.serve import discovery
        from mgvr.serve.client import running_server
        from mgvr.storage.layout import default_index_dir

        root = default_index_dir(index_dir)
        try:
            if not 0 <= port <= 65535:
                raise UsageError(f"--port must be 0 to 65535, not {port}")
            if workers is not None and workers <= 0:
                raise UsageError(f"--workers must be positive, not {workers}")
            if request_timeout <= 0:
                raise UsageError(f"--request-timeout must be positive, not {request_timeout}")
            if token is not None and len(token) < 8:
                raise UsageError("--token must be at least 8 characters")
            if token is None and not is_loopback(host):
                token = secrets.token_urlsafe(24)
            set_torch_threads(threads)
            other = running_server(root)
            if other is not None:
                raise UsageError(f"{root}: already served by pid {other.pid} on port "
                                 f"{other.port}; stop it first or search through it")
            from mgvr.retriever.search import Retriever
            from mgvr.serve.app import create_app
            from mgvr.serve.runner import bind, serve
            from mgvr.serve.service import SearchService

            service = SearchService(Retriever(root, device=device),
                                    workers or default_workers())
            service.warm_up()
            sock = bind(host, port)
        except OSError as e:
            typer.echo(f"mgvr: error: cannot listen on {host}:{port}: {e.strerror}", err=True)
            raise typer.Exit(1) from None
        except MgvrError as e:
            raise fail(e) from None
        info = discovery.ServeInfo(os.getpid(), sock.getsockname()[1], service.index,
                                   str(service.retriever.device), time.time(), host, token)
        try:
            discovery.write(root, info)
        except OSError as e:
            typer.echo(f"mgvr: warning: cannot write {root / discovery.SERVE_FILENAME} "
                       f"({e.strerror}); `mgvr search` will not find this server", err=True)
        url = page_url(host, info.port, token)
        typer.echo(f"mgvr: serving {root} on {url} (pid {info.pid})", err=True)
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        signal.signal(signal.SIGTERM, _stop)
        try:
            serve(create_app(service, token, request_timeout), sock, request_timeout)
        except KeyboardInterrupt:
            pass
        finally:
            discovery.remove_if_ours(root, info.pid)
            service.close()
            sock.close()


def page_url(host: str, port: int, token: str | None) -> str:
    """The URL to open: on a wildcard address, this machine's name."""
    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
