"""Serving command of the `tuneloop` CLI: `tuneloop serve` runs the BentoML service in the foreground."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

SERVICE = "tuneloop.service:TuneloopService"


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default TUNELOOP_SERVE_WORKERS or 1).")
    ] = None,
) -> None:
    """Serve champion (and canary) from the registry: POST /classify, /feedback; GET /status, /metrics.

    Each worker follows the registry on its own (TUNELOOP_SERVE_POLL_S); same as
    `bentoml serve tuneloop.service:TuneloopService`. Stops on Ctrl-C after in-flight requests.
    """
    if workers is not None:
        os.environ["TUNELOOP_SERVE_WORKERS"] = str(workers)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    args = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    # exec: the server is this process, so signals from the shell or a supervisor reach it directly.
    os.execv(sys.executable, args)


COMMANDS = [serve]
