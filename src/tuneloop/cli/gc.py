"""Retention commands of the `tuneloop` CLI: `tuneloop gc` (mirrors the `gc` flow, flows/gc.py) and
`tuneloop restore N`, which makes a collected version whole again."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tuneloop.cli.common import JsonOpt, ProjectOpt, emit, out, run_guarded, settings_or_exit
from tuneloop.cli.tables import Column, print_table

# At 80 columns: version 7 + aliases 10 + action 7 + MB 6 + reason ~30 = 60 characters of cells,
# 5 x 3 + 1 = 16 of borders and padding; the reason folds rather than push the others out.
GC_COLUMNS = [
    Column("version"),
    Column("aliases", drop=2),
    Column("action"),
    Column("MB", justify="right"),
    Column("reason", fold_at=34),
    Column("files", drop=1, justify="right"),
]


def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be collected and removed; change nothing.")
    ] = False,
    by: Annotated[
        str | None,
        typer.Option(
            "--by", help="Who runs it, recorded on each collected version (default: $TUNELOOP_USER or $USER)."
        ),
    ] = None,
    wide: Annotated[bool, typer.Option("--wide", help="Every column at full width.")] = False,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Remove the rebuildable bulk of old versions, and cap the quarantine's whole-file copies.

    The policy's `retention` section (registry/policy.yaml) decides. A version outside retention
    (no alias, not among the `keep_whole_behind_aliases` newest behind the aliases, older than
    `min_age_days`, not tagged `keep_tag`=true) loses the files `collect` names: its merged model
    (model/merged/) and ONNX graphs (conversions/*/model*.onnx), ~286 of its ~287 MB. Each is first
    tagged `gc_collected` (files, bytes, when, by whom); promotion and serving then refuse it by
    name until `tuneloop restore N` rebuilds it. The oldest quarantine copies beyond
    `quarantine_max_copies` are removed.

    Never touched: a version holding champion, canary, previous or challenger; the adapter,
    checksums.json, MLmodel, reports, snapshot and conversion summaries of any version; runs,
    metrics, params and other tags; quarantine reports, the ledger and each copy's .reason.txt.
    A dry run plans exactly what the real run does. Runs MLflow marks deleted are reported with the
    `mlflow gc` command that purges them (a run a version was registered from: restore it instead).
    """
    from tuneloop.steps.gc import gc_step

    settings = settings_or_exit()
    result = run_guarded(lambda: gc_step(settings, dry_run=dry_run, by=by))
    emit(result, as_json, lambda r: _render(r, wide))


def _render(r: dict[str, Any], wide: bool) -> None:
    if r["policy"] is None:
        out.print(r["message"], markup=False)
        return
    rows = [
        [
            v["version"],
            ",".join(v["aliases"]) or "-",
            v["action"],
            f"{v['bytes'] / 1e6:.1f}" if v["action"] == "collect" else "-",
            v["reason"],
            str(len(v["files"])) if v["action"] == "collect" else "-",
        ]
        for v in r["versions"]
    ]
    title = f"gc {'(dry run) ' if r['dry_run'] else ''}by {r['by']}"
    print_table(out, GC_COLUMNS, rows, wide=wide, title=title)
    out.print(r["message"], markup=False)


def restore(
    version: Annotated[str, typer.Argument(help="The collected version to rebuild (a number).")],
    by: Annotated[
        str | None, typer.Option("--by", help="Who restores it, recorded on the version (default: $USER).")
    ] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Rebuild a version gc collected: its merged model from the kept adapter and the base model,
    checked file by file against the version's checksums.json before anything is uploaded, then its
    conversion. The `gc_collected` tag goes and `gc_restored` records when, by whom, and whether the
    rebuilt ONNX graphs are bit-for-bit the recorded ones. Refused (nothing uploaded, the version
    stays collected) when the rebuilt merged model differs from the registered one, e.g. on a host
    whose torch rounds differently. A whole version is left as it is.
    """
    from tuneloop.steps.restore import restore_step

    settings = settings_or_exit()
    result = run_guarded(lambda: restore_step(settings, version, by=by))
    emit(result, as_json, lambda r: out.print(r["message"], markup=False))


COMMANDS = [gc, restore]
