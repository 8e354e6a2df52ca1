"""Model commands of the `tuneloop` CLI: train, evaluate, approve, promote, convert, compress, demo.

Each command mirrors a Prefect flow (flows/) and calls the same step in `tuneloop.steps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tuneloop.cli.common import JsonOpt, ProjectOpt, emit, err, out, run_guarded, settings_or_exit


def train(
    snapshot: Annotated[
        str | None, typer.Option(help="Snapshot id to train on (default: the newest).")
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(help="Base model: folder, 'package:<pkg>' or hub id (default from settings)."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            help="Most epochs this round, first or continued (default: epochs, or continued_epochs for "
            "a round that continues from the champion)."
        ),
    ] = None,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Train one continual LoRA round on a snapshot, evaluate it against the champion, register it.

    The round continues from the current champion's adapter (or the base model for the first
    round), replays a seeded sample of earlier rows, and is scored on the snapshot's eval split, the
    golden regression set and both. The gates in the promotion policy decide `gate.passed`; a refused
    candidate is still registered, with the reasons. Re-running the same round reuses its version.
    """
    from tuneloop.steps.round import train_step

    settings = settings_or_exit()
    if base_model:
        settings = settings.model_copy(update={"base_model": base_model})
    result = run_guarded(
        lambda: train_step(settings, snapshot_id=snapshot, progress=not as_json, epochs=epochs)
    )
    emit(result, as_json, _render_round)


def _render_round(r: dict[str, Any]) -> None:
    verdict = "[green]passed[/]" if r["gate"]["passed"] else "[red]refused[/]"
    reused = " (already registered: reused)" if r["reused"] else ""
    out.print(f"version {r['version']} from {r['data_snapshot']} (parent {r['parent_version']}){reused}")
    table = Table("set", "macro-F1", "accuracy")
    for name, metrics in r["metrics"].items():
        if isinstance(metrics, dict):
            table.add_row(name, f"{metrics.get('macro_f1', 0):.3f}", f"{metrics.get('accuracy', 0):.3f}")
    out.print(table)
    out.print(f"gate: {verdict}; approval: {r['approval']}; aliases: {', '.join(r['aliases']) or '-'}")
    for reason in r["gate"]["reasons"]:
        out.print(f"  - {reason}")


def evaluate(
    version: Annotated[str, typer.Argument(help="Registered version number, or an alias such as champion.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled CSV, JSONL or Parquet file.")],
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Score a registered version on a labelled file: accuracy, macro-F1, per-label F1, confusion."""
    from tuneloop.steps.evaluate import evaluate_step

    settings = settings_or_exit()
    result = run_guarded(lambda: evaluate_step(settings, _resolve(settings, version), data))
    emit(result, as_json, _render_eval)


def _render_eval(r: dict[str, Any]) -> None:
    out.print(
        f"v{r['version']} on {r['data']}: {r['rows']} rows, accuracy {r['accuracy']:.3f}, "
        f"macro-F1 {r['macro_f1']:.3f}"
    )
    table = Table("label", "F1", "support")
    for label, s in r["per_label"].items():
        if s["support"]:
            table.add_row(label, f"{s['f1']:.3f}", str(s["support"]))
    out.print(table)
    if r["skipped"]:
        err.print(f"skipped rows: {r['skipped']}")
    if r["unknown_labels"]:
        err.print(f"labels the model does not know: {r['unknown_labels']}")


def approve(
    version: Annotated[str, typer.Argument(help="Version number to approve or reject.")],
    by: Annotated[str, typer.Option("--by", help="Who decides (recorded on the version).")],
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approve.")] = False,
    note: Annotated[str, typer.Option(help="Why (recorded on the version).")] = "",
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Approve (or reject) a version: the same as setting the tags approval and approval_by in the UI."""
    from tuneloop.steps.release import approve_step

    settings = settings_or_exit()
    result = run_guarded(lambda: approve_step(settings, version, by=by, reject=reject, note=note))
    emit(result, as_json, lambda r: out.print(f"v{r['version']}: {r['approval']} by {r['by']}"))


def promote(
    version: Annotated[str, typer.Argument(help="Approved version to make champion.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded on the version).")],
    by: Annotated[str | None, typer.Option("--by", help="Who (default: $TUNELOOP_USER or $USER).")] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote although a canary rollout is in flight: it is ended, the reason recorded.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Point `champion` at an approved version now (the first model, or break-glass).

    The old champion becomes `previous`. The normal path for later versions is a canary rollout;
    while one is in flight this is refused unless --force.
    """
    from tuneloop.steps.release import promote_step

    settings = settings_or_exit()
    result = run_guarded(lambda: promote_step(settings, version, reason=reason, by=by, force=force))
    emit(
        result,
        as_json,
        lambda r: out.print(
            f"champion: v{r['champion']} (previous: v{r['previous'] or '-'})"
            + ("" if r["changed"] else " unchanged")
        ),
    )


def convert(
    version: Annotated[
        str, typer.Argument(help="Registered version number, or an alias such as challenger.")
    ],
    calibrate: Annotated[
        bool, typer.Option(help="Static Q/DQ INT8 calibrated on the training snapshot (else dynamic INT8).")
    ] = True,
    tensorrt: Annotated[
        str, typer.Option(help="'auto' (build where TensorRT and a GPU exist) or 'off'.")
    ] = "auto",
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Export ONNX, fuse, quantise to INT8 (and build a TensorRT engine on a GPU), then gate on parity.

    Parity compares ONNX fp32 with PyTorch (max |delta logit|) and INT8 with fp32 (macro-F1 drop, argmax
    agreement) on the eval split and the golden set, with the thresholds in the policy. The artifacts
    and checksums are logged on the version; a failed conversion is recorded and never served.
    """
    from tuneloop.steps.convert import convert_step

    if tensorrt not in ("auto", "off"):
        raise typer.BadParameter("--tensorrt must be 'auto' or 'off'")
    settings = settings_or_exit()
    result = run_guarded(
        lambda: convert_step(settings, _resolve(settings, version), calibrate=calibrate, tensorrt=tensorrt)
    )
    emit(result, as_json, _render_convert)


def _render_convert(r: dict[str, Any]) -> None:
    from tuneloop.steps.convert import parity_markdown

    table = Table("artifact", "MB", "sha256")
    for name, art in r["artifacts"].items():
        if name.endswith((".onnx", ".plan")):
            table.add_row(name, f"{art['bytes'] / 1e6:.1f}", art["sha256"][:16])
    out.print(table)
    out.print(parity_markdown(r))
    if r["reused"]:
        out.print("(already converted with these settings: reused)")


def compress(
    version: Annotated[
        str, typer.Argument(help="Registered version number, or an alias such as challenger.")
    ],
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Distil depth students of a version from its merged model and judge each against it.

    For every depth in the policy's `compress` section: keep that many of the teacher's encoder
    layers (evenly spread, first and last kept), train on the version's training and replay rows
    from the teacher's logits, and judge on its eval rows and golden set (macro-F1 drop, agreement,
    per-label drop). Each student, passed or refused, is recorded on the version (run artifacts
    `students/<n>L/`, tag `students`); none is served yet.
    """
    from tuneloop.steps.compress import compress_step

    settings = settings_or_exit()
    result = run_guarded(lambda: compress_step(settings, _resolve(settings, version), progress=not as_json))
    emit(result, as_json, _render_compress)


def _render_compress(r: dict[str, Any]) -> None:
    teacher = r["teacher"]
    f1 = ", ".join(f"{name} {value:.4f}" for name, value in teacher["macro_f1"].items())
    out.print(
        f"v{r['version']} teacher: {teacher['layers']} layers, {teacher['params'] / 1e6:.1f} M parameters, "
        f"{teacher['bytes'] / 1e6:.1f} MB; macro-F1 {f1}; {r['rows']['train']} training rows "
        f"({r['rows']['replay']} replayed)"
    )
    table = Table(
        "depth", "layers", "M params", "MB", "macro-F1 (teacher -> student)", "agreement", "verdict", "s"
    )
    for s in r["students"]:
        if "skipped" in s:
            table.add_row(str(s["depth"]), "-", "-", "-", "-", "-", f"skipped: {s['skipped']}", "-")
            continue
        scores = "; ".join(f"{n} {v['teacher']:.3f} -> {v['student']:.3f}" for n, v in s["macro_f1"].items())
        agreement = "; ".join(f"{n} {v:.3f}" for n, v in s["agreement"].items())
        table.add_row(
            str(s["depth"]),
            str(s["layers"]),
            f"{s['params'] / 1e6:.1f}",
            f"{s['bytes'] / 1e6:.1f}",
            scores,
            agreement,
            "[green]passed[/]" if s["passed"] else "[red]refused[/]",
            f"{s['seconds']:.0f}",
        )
    out.print(table)
    for s in r["students"]:
        for reason in s.get("reasons", []):
            out.print(f"  - depth {s['depth']}: {reason}")
    for s in r["students"]:
        if "recorded" in s:
            out.print(f"  depth {s['depth']}: recorded at {s['recorded']['path']} on v{r['version']}'s run")
    out.print(
        f"Next: `tuneloop convert {r['version']}` weighs the passing students beside the teacher and "
        "publishes the fastest (tag `serves`)."
    )


def demo(
    projects: Annotated[
        int,
        typer.Option(
            "--projects",
            min=1,
            max=2,
            help="2: two classifiers (the support intents and a routing classifier built from the same "
            "rows) in one loop and one service, with a tenant each, both canaries at once.",
        ),
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole loop on the bundled data and embedded defaults, with the service running.

    Starts `tuneloop serve` on 127.0.0.1 (a free port; stopped at the end), trains three drops: the
    first version becomes champion, later ones go through the canary steps of
    registry/policy.demo.yaml under synthetic traffic. Then a copy of the champion is rolled out
    with the service's fault switch on it (TUNELOOP_SERVE_FAULT_VERSION, _ERROR_RATE=0.5) and rolled
    back. Ends with a table of versions, metrics and outcomes (--json: one JSON object, `rounds`).
    """
    import os

    from tuneloop.demo.story import run_demo

    # The story is the output: MLflow's per-download and transformers' per-load progress bars would
    # put dozens of carriage-return lines between its steps in a terminal and in a log file.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # MLflow logs "Validating input example against model signature" at INFO on every registration;
    # it reads this variable when it configures its loggers (on import, later than this line).
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    settings = settings_or_exit()

    def show(line: str) -> None:  # the demo wraps its own lines at 80 columns; no markup
        out.print(line, markup=False, highlight=False, soft_wrap=True)

    if projects == 2:
        from tuneloop.demo.projects import run_projects_demo

        result = run_guarded(lambda: run_projects_demo(settings, echo=None if as_json else show))
    else:
        result = run_guarded(lambda: run_demo(settings, echo=None if as_json else show))
    emit(result, as_json, lambda r: None)


def _resolve(settings: Any, version: str) -> str:
    """Accept an alias (champion, canary, challenger, previous) where a version number is expected."""
    from tuneloop.steps.versions import resolve_version

    return resolve_version(settings, version)


COMMANDS = [train, evaluate, approve, promote, convert, compress, demo]
