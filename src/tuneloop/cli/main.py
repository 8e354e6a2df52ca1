"""`tuneloop`: every step of the loop from the shell, each command mirroring a Prefect flow.

Settings come from `TUNELOOP_*` environment variables and an optional YAML config file (`--config`
or `TUNELOOP_CONFIG`); see `tuneloop config`. Every command that reports takes `--json` and then
prints exactly one JSON object on stdout (progress and messages go to stderr).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from tuneloop.cli import flows, gc, model, privacy, projects, rollout, serve, tenants
from tuneloop.cli.common import CHOSEN, JsonOpt, ProjectOpt, emit, err, out, run_guarded, settings_or_exit
from tuneloop.cli.tables import Column, print_table
from tuneloop.config import mask_settings

app = typer.Typer(
    name="tuneloop",
    help="Keep a fine-tuned text classifier current: ingest -> train -> evaluate -> register -> "
    "convert -> serve -> roll out. State lives in TUNELOOP_HOME (default ./.tuneloop) and in the "
    "MLflow registry; `tuneloop status` shows both.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="YAML config file (same keys as TUNELOOP_* variables, lower case)."
        ),
    ] = None,
    home: Annotated[
        Path | None, typer.Option("--home", help="Override TUNELOOP_HOME for this command.")
    ] = None,
) -> None:
    """Global options apply to every command."""
    CHOSEN["project"] = None  # the command's own --project sets it again
    if config is not None:
        os.environ["TUNELOOP_CONFIG"] = str(config)
    if home is not None:
        os.environ["TUNELOOP_HOME"] = str(home)


# --- ingest ----------------------------------------------------------------------------------
@app.command()
def ingest(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="CSV, JSONL or Parquet files or folders; default: the landing folder."),
    ] = None,
    text_column: Annotated[str | None, typer.Option(help="Column holding the text (default 'text').")] = None,
    label_column: Annotated[
        str | None, typer.Option(help="Column holding the label (default 'label'; BANKING77: 'category').")
    ] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Validate new labelled data, quarantine bad rows with a reason, drop duplicates, cut a snapshot.

    Every row read is accepted, a duplicate, or quarantined (the summary shows the sum). Files already
    ingested (same content hash) are skipped. The snapshot is immutable and logged to MLflow.
    """
    from rich.progress import Progress

    from tuneloop.steps.ingest import ingest_step

    settings = settings_or_exit(text_column=text_column, label_column=label_column)
    with Progress(console=err, transient=True, disable=as_json) as progress:
        task = progress.add_task("reading files", total=None)

        def report(stage: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=f"{stage} {done}/{total}")

        result = run_guarded(lambda: ingest_step(settings, list(paths or []), progress=report))
    emit(result, as_json, _render_ingest)


def _render_ingest(r: dict[str, Any]) -> None:
    table = Table(title=f"ingest {r['batch']}", show_header=False)
    for key in ("rows", "accepted", "duplicates", "quarantined"):
        table.add_row(key, str(r[key]))
    table.add_row("snapshot", r["snapshot"] or "-")
    for reason, n in r["reasons"].items():
        table.add_row(f"  quarantined: {reason}", str(n))
    for fq in r["files_quarantined"]:
        table.add_row("  file quarantined", f"{fq['path']} ({fq['reason']}: {fq['detail']})")
    for fq in r.get("already_quarantined", []):
        table.add_row("  already quarantined", f"{fq['path']} ({fq['reason']}): not copied again")
    for fw in r.get("waiting", []):
        table.add_row("  waiting", f"{fw['path']} ({fw['detail']}; a later poll reads it)")
    out.print(table)
    out.print(r["message"])
    if r.get("quarantine_report"):
        out.print(f"quarantine report: {r['quarantine_report']}")


# --- status ----------------------------------------------------------------------------------
WideOpt = Annotated[
    bool, typer.Option("--wide", help="Every column at full width (default: fit the terminal, 80 in a pipe).")
]

SNAPSHOT_COLUMNS = [
    Column("id"),
    Column("created", drop=2),
    Column("train", justify="right"),
    Column("eval", justify="right"),
    Column("golden", justify="right"),
    Column("labels", justify="right"),
    Column("parent", drop=3),
    Column("hash", drop=4),
    Column("redacted", drop=1, justify="right"),
]
LABEL_COLUMNS = [
    Column("label"),
    Column("train", justify="right"),
    Column("eval", justify="right"),
    Column("golden", justify="right"),
]
# What a reader asks first: which version serves (aliases), how its last rollout went, did it pass;
# the lineage columns (snapshot, parent) are in `--wide`, `--json` and the MLflow UI.
# At 80 columns: version 7 + aliases 8 + rollout 24 + gate 6 + approval 8 + macro-F1 8 = 61
# characters of cells and 6 x 3 + 1 = 19 of borders and padding, 80 in all.
VERSION_COLUMNS = [
    Column("version"),
    Column("aliases"),
    Column("rollout", fold_at=24),
    Column("gate"),
    Column("approval", drop=2),
    Column("macro-F1", drop=1, justify="right"),
    Column("golden F1", drop=3, justify="right"),
    Column("convert", drop=4),
    Column("serves", drop=4),
    Column("snapshot", drop=5),
    Column("parent", drop=6),
    Column("redacted", drop=7, justify="right"),
    Column("MB", drop=8, justify="right"),
    Column("gc", drop=9, fold_at=20),
]


@app.command()
def status(
    as_json: JsonOpt = False,
    registry: Annotated[bool, typer.Option(help="Also read the MLflow registry (slower).")] = True,
    wide: WideOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Show snapshots, rows per label, quarantine totals, and registered versions with aliases.

    Each version shows its last rollout outcome (promoted through a canary or directly, rolled back
    and why, a canary in flight); `tuneloop history` has every event. Tables fit the terminal, 80
    columns in a pipe or a CI log, by leaving out the least useful columns (named under the table);
    `--wide` shows them all, `--json` everything.
    """
    from tuneloop.steps.status import status as status_step

    settings = settings_or_exit()
    result = run_guarded(lambda: status_step(settings, include_registry=registry))
    emit(result, as_json, lambda r: _render_status(r, wide))


def _render_status(r: dict[str, Any], wide: bool = False) -> None:
    data = r["data"]
    snapshots = [
        [
            s["id"],
            s["created_at"][:16].replace("T", " "),  # to the minute: the seconds and zone add nothing
            str(s["rows"]["train"]),
            str(s["rows"]["eval"]),
            str(s["rows"]["golden"]),
            str(s["labels"]),
            s["parent"] or "-",
            s["content_hash"],
            _redacted(s.get("personal_data", {})),
        ]
        for s in data["snapshots"]
    ]
    print_table(out, SNAPSHOT_COLUMNS, snapshots, wide=wide, title=f"snapshots in {data['home']}")
    labels = [
        [label, *(str(counts.get(split, 0)) for split in ("train", "eval", "golden"))]
        for label, counts in data["labels"].items()
    ]
    print_table(out, LABEL_COLUMNS, labels, wide=wide, title="rows per label (all snapshots)")
    for sid, why in data.get("excluded", {}).items():
        out.print(f"excluded: {sid} by {why['by']} at {why['at']}: {why['reason']}", markup=False)
    short = data.get("golden_short", {})
    if short:
        listing = ", ".join(f"{label} ({n})" for label, n in short.items())
        out.print(
            f"labels short of {data['golden_per_label']} golden rows (the per-label forgetting check does "
            f"not guard them yet; later snapshots fill the quota): {listing}",
            markup=False,
        )
    q = data["quarantine"]
    reasons = ", ".join(f"{k}={v}" for k, v in q["reasons"].items()) or "none"
    out.print(
        f"quarantine: {q['rows']} rows ({reasons}); {q['files']} whole files; in {q['folder']}", markup=False
    )
    if "bytes" in data:
        b = {k: f"{v / 1e6:.1f} MB" for k, v in data["bytes"].items()}
        out.print(
            f"on disk: snapshots {b['snapshots']}, quarantine {b['quarantine']}, scratch {b['scratch']} "
            f"(home {b['home']})",
            markup=False,
        )
    if "registry" in r:
        reg = r["registry"]
        versions = [
            [
                v["version"],
                ",".join(v["aliases"]) or "-",
                v.get("rollout", "-"),
                v["gate"],
                v["approval"],
                _fmt(v["macro_f1"]),
                _fmt(v["golden_macro_f1"]),
                v["conversion"],
                v.get("serves", "-"),
                v["data_snapshot"] or "-",
                v["parent_version"] or "-",
                _redacted(v.get("personal_data", {})),
                f"{v['bytes'] / 1e6:.1f}" if "bytes" in v else "-",
                v.get("gc", "-"),
            ]
            for v in reg["versions"]
        ]
        title = f"registered model {reg['model']} ({r['tracking_uri']})"
        print_table(out, VERSION_COLUMNS, versions, wide=wide, title=title)
        if "bytes" in reg:
            out.print(
                f"registry artifacts: {reg['bytes'] / 1e6:.1f} MB; gc would free "
                f"{reg['gc_would_free'] / 1e6:.1f} MB now (`tuneloop gc --dry-run` lists it)",
                markup=False,
            )
        _render_waiting(reg)


def _render_waiting(reg: dict[str, Any]) -> None:
    """One block per version waiting for a person, with both ways to approve it, verbatim."""
    if reg.get("policy_error"):
        err.print(f"policy not loaded, approvals not judged: {reg['policy_error']}", markup=False)
    for w in reg.get("waiting_for_approval", []):
        approvers = f" (approvers: {', '.join(w['approvers'])})" if w["approvers"] else ""
        # markup=False: reasons quote lists like ['alice'], which rich would read as style tags.
        out.print(f"WAITING FOR APPROVAL: v{w['version']} (conversion: {w['conversion']})", markup=False)
        for reason in w["reasons"]:
            out.print(f"  why: {reason}", markup=False)
        out.print(f"  in the UI: {w['ui']}", markup=False)
        out.print(f"  or run:    {w['command']}{approvers}", markup=False)


def _redacted(found: dict[str, int]) -> str:
    """Personal data redacted from a snapshot's or a version's rows: a total (--json: per entity)."""
    return str(sum(found.values())) if found else "-"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


# --- exclude ---------------------------------------------------------------------------------
@app.command()
def exclude(
    snapshot: Annotated[
        str, typer.Argument(help="Snapshot id, e.g. snap-0002 (`tuneloop status` lists them).")
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded with who and when).")],
    undo: Annotated[
        bool, typer.Option("--undo", help="Let an excluded snapshot back into training.")
    ] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who (default: $TUNELOOP_USER or $USER).")] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Keep a snapshot out of every later round: never trained on, replayed or judged again.

    For a snapshot whose labels are wrong (the gates name it when they refuse a round for it): until
    it is excluded, every round trains on it again and is refused again. The snapshot stays on disk;
    the decision is recorded with who, when and why, shown by `tuneloop status`, and undone with
    `--undo --reason TEXT`.
    """
    from tuneloop.steps.exclusions import exclude_step

    settings = settings_or_exit()
    result = run_guarded(lambda: exclude_step(settings, snapshot, reason, by=by, undo=undo))
    emit(
        result,
        as_json,
        lambda r: out.print(
            f"{r['snapshot']}: {'excluded from' if r['excluded'] else 'back in'} training ({r['reason']}); "
            f"excluded now: {', '.join(r['excluded_now']) or 'none'}",
            markup=False,
        ),
    )


# --- config ----------------------------------------------------------------------------------
@app.command("config")
def show_config(project: ProjectOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective settings as YAML (passwords and tokens in URIs shown as ****)."""
    settings = settings_or_exit()
    if as_json:
        sys.stdout.write(json.dumps(settings.describe(), default=str) + "\n")
    else:
        # Passwords in URIs are masked: this output is for reading, pasting into tickets and logs.
        out.print(yaml.safe_dump(mask_settings(settings.model_dump(mode="json")), sort_keys=False), end="")


for command in [
    *model.COMMANDS,
    *serve.COMMANDS,
    *rollout.COMMANDS,
    *flows.COMMANDS,
    *privacy.COMMANDS,
    *gc.COMMANDS,
]:
    app.command()(command)  # type: ignore[type-var]
app.add_typer(projects.app, name="project")
app.add_typer(tenants.app, name="tenant")

if __name__ == "__main__":
    app()
