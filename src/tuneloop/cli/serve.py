"""Serving command of the `tuneloop` CLI: `tuneloop serve` runs the BentoML service in the foreground."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Annotated

import typer

SERVICE = "tuneloop.service:TuneloopService"
LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine (127.0.0.0/8, ::1, `localhost`)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def exposure_problem(
    host: str, tokens: Mapping[str, str], insecure: bool, variables: Sequence[str]
) -> str | None:
    """Why the service must not start on `host` as configured, or None when it may.

    `tokens`: the token variables set (variable -> token); `variables`: every token variable, for
    the message.
    """
    if any(tokens.values()) or insecure or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without a bearer token: anyone who reaches that address could "
        "classify, post feedback that lands in training data, and read /status and /metrics. Set at "
        f"least one of {', '.join(variables)} (the first opens every path, each other one only its "
        "own; clients send 'Authorization: Bearer <token>'), listen on 127.0.0.1, or pass "
        "--insecure if something in front of the service authenticates"
    )


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default TUNELOOP_SERVE_WORKERS or 1).")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve on a non-loopback address without a bearer token (auth done in front).",
        ),
    ] = False,
    project: Annotated[
        list[str] | None,
        typer.Option(
            "--project",
            help="Host only this project (repeat for several); default: every declared project "
            "(TUNELOOP_SERVE_PROJECTS).",
        ),
    ] = None,
) -> None:
    """Serve champion (and canary) from the registry: POST /classify, /feedback; GET /status, /metrics.

    Every declared project is served at POST /v1/<project>/classify and /v1/<project>/feedback
    (GET /v1/<project>/status), each following its own registered model's aliases and canary
    weight; /classify and /feedback are the default project's. Callers present a tenant's token
    (`tuneloop tenant add`), allowed on that project and held to its quota (429 with Retry-After).
    With TUNELOOP_SERVE_MEMORY_MB, projects not in TUNELOOP_SERVE_PINNED load on their first
    request and the least recently used is evicted past the budget.

    Each worker follows the registry on its own (TUNELOOP_SERVE_POLL_S); same as
    `bentoml serve tuneloop.service:TuneloopService`. Stops on Ctrl-C after in-flight requests.
    Without a bearer token (TUNELOOP_API_TOKEN for every path, or TUNELOOP_METRICS_TOKEN,
    _CLASSIFY_TOKEN, _FEEDBACK_TOKEN for one scope each) it listens only on a loopback address,
    unless told --insecure.
    """
    from tuneloop.cli.common import settings_or_exit
    from tuneloop.steps.serve import TOKEN_VARIABLES, service_tokens
    from tuneloop.steps.tenants import tenants_file

    try:
        tokens = service_tokens()
    except ValueError as exc:  # two variables share a token: the service would refuse it too
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    settings = settings_or_exit()
    tenants = tenants_file(settings)
    if tenants.exists():  # tenants' tokens turn auth on as a token variable does
        tokens = {**tokens, "tenants file": str(tenants)}
    problem = exposure_problem(host, tokens, insecure, [*TOKEN_VARIABLES, "a tenant (`tuneloop tenant add`)"])
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    if workers is not None:
        os.environ["TUNELOOP_SERVE_WORKERS"] = str(workers)
    if project:
        os.environ["TUNELOOP_SERVE_PROJECTS"] = ",".join(project)
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # BentoML empties $BENTOML_HOME/prometheus_multiproc_dir when a server starts: two servers on one
    # host sharing ~/bentoml would wipe each other's /metrics (a canary then "answers 0 items").
    os.environ.setdefault("BENTOML_HOME", str(settings.home_dir / "serve" / f"bentoml-{port}"))
    args = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host, "--port", str(port)]
    # exec: the server is this process, so signals from the shell or a supervisor reach it directly.
    os.execv(sys.executable, args)


COMMANDS = [serve]
