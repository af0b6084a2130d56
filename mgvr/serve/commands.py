"""The `mgvr serve` command, registered on the CLI app by `register(app)`."""

from __future__ import annotations

import os
import signal
import time
from typing import Annotated

import typer

from mgvr.cli_common import Device, IndexPath, fail, set_torch_threads
from mgvr.errors import MgvrError, UsageError


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds serve_forever, so serve.json is removed on the way out


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        index_dir: IndexPath = None,
        port: Annotated[int, typer.Option(
            help="TCP port on 127.0.0.1; 0 picks a free one (recorded in <index>/serve.json).")]
            = 0,
        device: Device = None,
        threads: Annotated[int | None, typer.Option(
            help="CPU threads for torch (text encoding). Default: torch's choice; 1 is faster "
                 "on a small or busy machine.", show_default=False)] = None,
    ) -> None:
        """Answer searches over HTTP JSON on localhost with the model and index kept warm.

        `mgvr search` on the same index uses the server when it runs (see README, Serving).
        """
        from mgvr.serve import discovery
        from mgvr.serve.client import running_server
        from mgvr.storage.layout import default_index_dir

        root = default_index_dir(index_dir)
        try:
            if not 0 <= port <= 65535:
                raise UsageError(f"--port must be 0 to 65535, not {port}")
            set_torch_threads(threads)
            other = running_server(root)
            if other is not None:
                raise UsageError(f"{root}: already served by pid {other.pid} on port "
                                 f"{other.port}; stop it first or search through it")
            from mgvr.retriever.search import Retriever
            from mgvr.serve.server import SearchService, make_server

            service = SearchService(Retriever(root, device=device))
            service.warm_up()
            server = make_server(service, port)
        except OSError as e:
            typer.echo(f"mgvr: error: cannot listen on 127.0.0.1:{port}: {e.strerror}", err=True)
            raise typer.Exit(1) from None
        except MgvrError as e:
            raise fail(e) from None
        info = discovery.ServeInfo(os.getpid(), server.server_address[1], service.index,
                                   str(service.retriever.device), time.time())
        try:
            discovery.write(root, info)
        except OSError as e:
            typer.echo(f"mgvr: warning: cannot write {root / discovery.SERVE_FILENAME} "
                       f"({e.strerror}); `mgvr search` will not find this server", err=True)
        signal.signal(signal.SIGTERM, _stop)
        typer.echo(f"mgvr: serving {root} on http://{info.host}:{info.port} (pid {info.pid})",
                   err=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            discovery.remove_if_ours(root, info.pid)
            server.server_close()
