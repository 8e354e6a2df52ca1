"""Personal data command of the `tuneloop` CLI: `tuneloop redact` (a text, or `--check` the stores)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tuneloop.cli.common import JsonOpt, ProjectOpt, emit, fail, out, run_guarded, settings_or_exit


def redact(
    texts: Annotated[
        list[str] | None,
        typer.Argument(help="Texts to redact as the loop would (ingest, /classify, /feedback)."),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Scan the snapshots, quarantine and landing folders for personal data and report "
            "counts per file and entity (never the values). Exits 1 when any is found.",
        ),
    ] = False,
    as_json: JsonOpt = False,
    project: ProjectOpt = None,
) -> None:
    """Replace personal data with typed placeholders, as every door of the loop does.

    The policy's `privacy` section (registry/policy.yaml) says what is looked for: card numbers
    (Luhn), IBANs (mod 97), e-mail addresses, phone numbers, IP addresses, crypto wallets, order and
    account numbers. Names and addresses are not found: that needs a named-entity model, none ships.

    `tuneloop redact "my card 4111 1111 1111 1111 was declined"` shows what would be kept.
    `tuneloop redact --check` scans what is stored now, e.g. data ingested before redaction existed.
    Nothing is rewritten: a snapshot is immutable; keep one that holds personal data out of training
    with `tuneloop exclude SNAPSHOT --reason 'personal data'`.
    """
    from tuneloop.steps.privacy import redact_check, redact_text

    settings = settings_or_exit()
    if check == bool(texts):
        fail(
            "give texts to redact, or --check to scan what is stored (not both)",
            hint="tuneloop redact --help",
        )
    if check:
        result = run_guarded(lambda: redact_check(settings))
        emit(result, as_json, _render_check)
        if result["files"]:
            raise typer.Exit(1)
        return
    assert texts is not None
    done = redact_text(settings, texts)
    emit({"texts": done}, as_json, _render_texts)


def _render_texts(result: dict[str, Any]) -> None:
    for item in result["texts"]:
        out.print(item["text"], markup=False, highlight=False)


def _render_check(result: dict[str, Any]) -> None:
    for item in result["files"]:
        found = ", ".join(f"{n} {entity}" for entity, n in item["found"].items())
        out.print(f"{item['kind']:<10} {item['path']}: {found}", markup=False, highlight=False)
    out.print(result["message"], markup=False, highlight=False)


COMMANDS = [redact]
