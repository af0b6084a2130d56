"""What every command module of the CLI shares: option types, error exit, torch threads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mgvr.errors import MgvrError, UsageError

IndexPath = Annotated[Path | None, typer.Option(
    "--index", help="Index directory. Default: $MGVR_INDEX, else the per-user data directory.",
    show_default=False)]
Device = Annotated[str | None, typer.Option(
    help="torch device, e.g. cpu or cuda:0. Default: cuda when available, else cpu.")]


def fail(error: MgvrError) -> typer.Exit:
    """Print the error as one line and exit with its documented code."""
    typer.echo(f"mgvr: error: {error}", err=True)
    return typer.Exit(error.exit_code)


def shown(path: str) -> str:
    """A path safe to print on a terminal: control characters (newlines, ANSI escapes) and
    bytes that are not UTF-8 are written as escapes (the JSON output keeps them exactly)."""
    out = []
    for char in path:
        if "\udc80" <= char <= "\udcff":  # a byte os.fsdecode could not decode
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif not char.isprintable():
            out.append(repr(char)[1:-1])
        else:
            out.append(char)
    return "".join(out)


def set_torch_threads(threads: int | None) -> None:
    """--threads: torch's intra-op threads (None leaves torch's choice)."""
    if threads is None:
        return
    if threads <= 0:
        raise UsageError(f"--threads must be positive, not {threads}")
    import torch  # only once there is work to do

    torch.set_num_threads(threads)
