"""Rollout commands of the `tuneloop` CLI: rollout, rollback, history.

Each calls the same step in `tuneloop.steps.rollout` / `rollout_state` that a flow would.
Runnable alone as `python -m tuneloop.cli.rollout` (tests start controllers that way to kill them).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tuneloop.cli.common import JsonOpt, ProjectOpt, emit, fail, out, run_guarded, settings_or_exit
from tuneloop.cli.tables import Column, print_table

DEFAULT_METRICS = "http://127.0.0.1:3000/metrics"


def rollout(
    version: Annotated[str, typer.Argument(help="Approved, converted version to roll out.")],
    metrics_url: Annotated[
        list[str] | None,
        typer.Option(
            "--metrics-url", help=f"The service's /metrics, once per replica (default {DEFAULT_METRICS})."
        ),
    ] = None,
    prometheus: Annotated[
        str | None, typer.Option(help="Read a Prometheus server instead (e.g. http://prometheus:9090).")
    ] = None,
    selector: Annotated[
        str,
        typer.Option(
            envvar="TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR",
            help="With --prometheus: label matchers for every series, e.g. '{job=\"tuneloop\"}'.",
        ),
    ] = "",
    resolve: Annotated[
        bool,
        typer.Option(
            "--resolve",
            help="Read every address each --metrics-url host resolves to: a headless Service "
            "(one address per replica), not a load-balanced one.",
        ),
    ] = False,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for another controller's lease (0: refuse).")
    ] = 0.0,
    lease: Annotated[
        float, typer.Option(help="Lease of the rollout lock, seconds (renewed every third).")
    ] = 30.0,
    tick: Annotated[
        float | None, typer.Option(help="Seconds between judgements (default: step / 10).")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who (default: $TUNELOOP_USER or $USER).")] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Canary a version through the policy's steps; promote it, or roll it back on the first failed check.

    Each step sets the registered-model tag canary_weight; the service follows it. Run again after
    a crash to resume (use --wait longer than --lease if the dead controller's lease still holds).
    """
    from tuneloop.steps.metrics import build_source
    from tuneloop.steps.rollout import rollout_step

    settings = settings_or_exit()
    if selector and not prometheus:
        fail("--selector narrows the series of a Prometheus server: it needs --prometheus")
    try:  # this project's series only: versions of two projects share numbers
        source = build_source(
            metrics_url or [DEFAULT_METRICS],
            prometheus=prometheus,
            selector=selector,
            resolve=resolve,
            project=settings.project,
        )
    except ValueError as exc:  # a selector that names `project` itself
        fail(str(exc), hint="leave the project out of --selector: --project chooses it")
        raise  # unreachable
    result = run_guarded(
        lambda: rollout_step(
            settings,
            version,
            source,
            by=by,
            wait_s=wait,
            lease_s=lease,
            tick_s=tick,
            echo=None if as_json else out.print,
        )
    )
    emit(result, as_json, lambda r: out.print(f"v{r['version']}: {r['outcome']} (champion v{r['champion']})"))
    if result["outcome"] == "rolled_back":
        raise typer.Exit(1)


def rollback(
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded on the version).")],
    by: Annotated[str | None, typer.Option("--by", help="Who (default: $TUNELOOP_USER or $USER).")] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Back to the last known good version now: withdraw a canary, or move champion to previous."""
    from tuneloop.steps.rollout_state import rollback_step

    settings = settings_or_exit()
    result = run_guarded(lambda: rollback_step(settings, reason=reason, by=by))
    emit(result, as_json, lambda r: out.print(f"{r['action']}: champion v{r['champion']}"))


# At 80 columns: when 19 + version 7 + event 14 + why 24 = 64 characters of cells and 4 x 3 + 1 = 13
# of borders and padding, 77 in all; who and from -> to come back with --wide (or --json).
HISTORY_COLUMNS = [
    Column("when (UTC)"),
    Column("version"),
    Column("event"),
    Column("by", drop=1),
    Column("from -> to", drop=2),
    Column("why", fold_at=24),
]


def history(
    limit: Annotated[int, typer.Option(help="Most records to show, newest first.")] = 50,
    wide: Annotated[bool, typer.Option("--wide", help="Every column at full width.")] = False,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Audit records: alias moves (who, when, why, from -> to, figures), approvals, rollouts."""
    from tuneloop.steps.rollout_state import history_step

    settings = settings_or_exit()
    result = run_guarded(lambda: history_step(settings, limit=limit))
    emit(result, as_json, lambda r: _render_history(r, wide))


def _render_history(r: dict[str, Any], wide: bool = False) -> None:
    rows = []
    for rec in r["records"]:
        move = f"{rec.get('from') or '-'} -> {rec.get('to') or '-'}" if "to" in rec or "from" in rec else ""
        if "weight" in rec:
            move += f" @ {rec['weight']:.0%}"
        rows.append(
            [
                rec["at"],
                rec["version"],
                rec["event"],
                str(rec.get("by", "")),
                move,
                str(rec.get("reason", "")),
            ]
        )
    print_table(out, HISTORY_COLUMNS, rows, wide=wide)
    out.print("aliases: " + ", ".join(f"{a}=v{v}" for a, v in sorted(r["aliases"].items())))
    if r["rollout"]:
        out.print(f"rollout in flight: v{r['rollout']['version']} at step {r['rollout']['step'] + 1}")


COMMANDS = [rollout, rollback, history]

if __name__ == "__main__":
    app = typer.Typer(add_completion=False)
    for command in COMMANDS:
        app.command()(command)  # type: ignore[type-var]
    app()
