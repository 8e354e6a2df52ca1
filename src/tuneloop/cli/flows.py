"""Loop commands of the `tuneloop` CLI: `retrain` runs one continual round in process, `worker`
serves the Prefect deployments (flows/deploy.py) in the foreground.

`retrain` calls the same steps as the `continual` flow (steps/continual.py), without Prefect; the
server path is `prefect deployment run continual/loop -p trigger=manual`. This module imports no
Prefect: `worker` runs flows/deploy.py in a process of its own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.cli.common import JsonOpt, ProjectOpt, emit, err, out, run_guarded, settings_or_exit

REPO = Path(__file__).resolve().parents[3]  # src/tuneloop/cli/flows.py -> the checkout


def retrain(
    snapshot: Annotated[
        str | None,
        typer.Option(help="Train up to this existing snapshot; the landing folder is not ingested."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="No ingest; train, evaluate and register the candidate (never approved), then stop: "
            "no conversion, promotion or rollout.",
        ),
    ] = False,
    skip_approval: Annotated[
        bool,
        typer.Option(
            "--skip-approval",
            help="Do not wait for approval; refused unless the policy needs no person (auto_approve).",
        ),
    ] = False,
    approval_wait: Annotated[
        float, typer.Option(help="Seconds to wait for a person's approval before stopping.")
    ] = 900.0,
    service_url: Annotated[
        str, typer.Option(help="The service whose /metrics the canary is judged on.")
    ] = os.environ.get("TUNELOOP_SERVICE_URL", "http://127.0.0.1:3000"),
    epochs: Annotated[
        int | None, typer.Option(help="Most epochs this round (default from settings).")
    ] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Run one round now: ingest -> train -> approval -> convert -> canary rollout.

    An operator's run: the policy's triggers (cooldown, daily cap) do not apply. Run it again to
    resume a round that stopped: each step finds what is already done (by its key) and skips it.
    """
    from tuneloop.steps.continual import continual_step

    settings = settings_or_exit()
    say = (lambda _msg: None) if as_json else err.print
    result = run_guarded(
        lambda: continual_step(
            settings,
            snapshot=snapshot,
            dry_run=dry_run,
            skip_approval=skip_approval,
            approval_wait_s=approval_wait,
            service_url=service_url,
            log=say,
            epochs=epochs,
        )
    )
    emit(result, as_json, _render_retrain)


def _render_retrain(r: dict[str, Any]) -> None:
    version = f"v{r['version']}: " if r.get("version") else ""
    detail = r.get("reason") or "; ".join(r.get("approval", {}).get("reasons", []))
    out.print(f"{version}{r['outcome']}" + (f" ({detail})" if detail else ""))


def worker(
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Take over deployments of the same names that the server has on a work pool (a "
            "cluster's): they are deleted, then served from here. Without it, serving is refused.",
        ),
    ] = False,
) -> None:
    """Serve the loop's Prefect deployments (schedules, triggers, manual runs) until Ctrl-C.

    Needs a Prefect server (PREFECT_API_URL; `prefect server start`): Prefect's ephemeral mode runs
    no scheduler. Same as `python -m flows.deploy serve` in the checkout. Refused when that server
    already has deployments of these names on a work pool (say, the cluster's, from a laptop whose
    PREFECT_API_URL points there): point PREFECT_API_URL at another server, or pass --replace.
    """
    if not (REPO / "flows" / "deploy.py").is_file():
        err.print(f"flows/deploy.py is not in {REPO}: run `tuneloop worker` from a source checkout")
        raise typer.Exit(2)
    os.chdir(REPO)
    # exec: the worker is this process, so Ctrl-C and a supervisor's SIGTERM reach Prefect directly.
    os.execv(
        sys.executable,
        [sys.executable, "-m", "flows.deploy", "serve", *(["--replace"] if replace else [])],
    )


COMMANDS = [retrain, worker]
