"""Tenant commands of the `tuneloop` CLI: `tuneloop tenant add|rotate|list|remove` (steps/tenants.py).

A new token is the last line of stdout, alone, and is shown only then; everything else goes to
stderr, so `TOKEN=$(tuneloop tenant add acme --projects default)` captures the token and nothing else.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from tuneloop.cli.common import JsonOpt, emit, err, out, run_guarded, settings_or_exit
from tuneloop.cli.tables import Column, print_table

app = typer.Typer(
    help="Tenants: the callers of `tuneloop serve`. A tenant is a bearer token with the projects it may "
    "call (POST /v1/<project>/classify and /v1/<project>/feedback; /classify and /feedback are the "
    "`default` project's) and a quota: --rps requests a second with bursts of --burst (a token bucket "
    "per worker process: W workers let a tenant through up to W x rps), and --max-texts texts per "
    "request. Over the quota: 429 with Retry-After; another project: 403; no or an unknown token: 401. "
    "Tenants live in TUNELOOP_TENANTS_FILE, default <home>/tenants.yaml (mode 0600; in Kubernetes a "
    "Secret), which keeps each token's sha256 only: the token is printed once, by `add` and `rotate`, "
    "as the last line of stdout. The service re-reads the file within a second of a change: adding, "
    "rotating and removing need no restart. /metrics counts requests, errors and throttled requests "
    "per tenant and project.",
    no_args_is_help=True,
)

TENANT_COLUMNS = [
    Column("tenant"),
    Column("projects", fold_at=30),
    Column("rps", justify="right"),
    Column("burst", justify="right"),
    Column("max texts", justify="right", drop=1),
]

IdArg = Annotated[
    str, typer.Argument(metavar="ID", help="Lower-case letters, digits, '_' and '-' (a metric label).")
]


def _show_token(result: dict[str, Any], said: str) -> None:
    tenant = result["tenant"]
    err.print(
        f"{said} tenant {tenant['id']} in {result['file']}: projects {', '.join(tenant['projects'])}, "
        f"{tenant['rps']:g} requests/s (burst {tenant['burst']}), at most {tenant['max_texts']} texts a "
        "request. Its token, shown this once (send it as 'Authorization: Bearer <token>'):",
        markup=False,
        highlight=False,
    )
    sys.stdout.write(result["token"] + "\n")
    sys.stdout.flush()


@app.command("add")
def add(
    tenant_id: IdArg,
    projects: Annotated[
        str,
        typer.Option(
            "--projects",
            help="Comma-separated projects it may call, each declared (`tuneloop project list`).",
        ),
    ],
    rps: Annotated[float, typer.Option("--rps", help="Requests a second it may send, per worker.")] = 10.0,
    burst: Annotated[int, typer.Option("--burst", help="Requests it may send at once after a pause.")] = 20,
    max_texts: Annotated[int, typer.Option("--max-texts", help="Texts per /classify request.")] = 64,
) -> None:
    """Add a tenant and print its new token, once, as the last line of stdout (only its hash is kept).

    The tenant is written to TUNELOOP_TENANTS_FILE (default <home>/tenants.yaml); a service already
    running lets it in within a second. Declare a project before giving a tenant access to it
    (`tuneloop project add NAME`); `default` is always there.
    """
    from tuneloop.steps.tenants import add_tenant

    settings = settings_or_exit()
    wanted = projects.split(",")
    result = run_guarded(
        lambda: add_tenant(settings, tenant_id, wanted, rps=rps, burst=burst, max_texts=max_texts)
    )
    _show_token(result, "added")


@app.command("rotate")
def rotate(tenant_id: IdArg) -> None:
    """Give a tenant a new token, printed once as the last line of stdout.

    The old token stops working when the service re-reads the file, within a second or so of the
    change, without a restart.
    """
    from tuneloop.steps.tenants import rotate_tenant

    settings = settings_or_exit()
    _show_token(run_guarded(lambda: rotate_tenant(settings, tenant_id)), "rotated the token of")


@app.command("remove")
def remove(tenant_id: IdArg) -> None:
    """Remove a tenant: its token stops working when the service re-reads the file."""
    from tuneloop.steps.tenants import remove_tenant

    settings = settings_or_exit()
    result = run_guarded(lambda: remove_tenant(settings, tenant_id))
    out.print(f"removed tenant {result['tenant']['id']} from {result['file']}", markup=False, highlight=False)


@app.command("list")
def list_tenants(as_json: JsonOpt = False) -> None:
    """List the tenants: id, projects and quota (never a token or its hash)."""
    from tuneloop.steps.tenants import list_tenants as list_step

    settings = settings_or_exit()
    result = run_guarded(lambda: list_step(settings))

    def render(r: dict[str, Any]) -> None:
        if not r["tenants"]:
            out.print(f"no tenants in {r['file']}: `tuneloop tenant add ID --projects NAME`", markup=False)
            return
        rows = [
            [t["id"], ", ".join(t["projects"]), f"{t['rps']:g}", str(t["burst"]), str(t["max_texts"])]
            for t in r["tenants"]
        ]
        print_table(out, TENANT_COLUMNS, rows, title=f"tenants ({r['file']})")

    emit(result, as_json, render)
