"""Helpers shared by the CLI modules: consoles, settings, JSON output, friendly errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from tuneloop.config import Settings, load_settings

err = Console(stderr=True)
out = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.")]


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except Exception as exc:  # pydantic ValidationError, bad config file
        fail(f"invalid settings: {exc}", hint="check TUNELOOP_* variables and the config file")
        raise  # unreachable


def fail(message: str, hint: str = "", code: int = 2) -> None:
    from tuneloop.config import mask_secrets

    # Last line of defence: an error from a library may quote a URI with its password.
    err.print(f"[bold red]error:[/] {mask_secrets(message)}")
    if hint:
        err.print(f"[dim]next: {hint}[/]")
    raise typer.Exit(code)


def emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
    else:
        render(result)


def run_guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run a step; turn the errors a user can fix into a message and exit code 2, not a traceback."""
    from tuneloop.steps.errors import user_errors

    try:
        return fn()
    except user_errors() as exc:
        fail(str(exc))
        raise  # unreachable
