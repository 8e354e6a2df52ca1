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


# The --project of the command being run: parsed before the command's body, which reads it through
# settings_or_exit. Kept here, not in os.environ, so one invocation never leaks into the next in the
# same process (CliRunner in tests); `main` clears it at the start of every invocation.
CHOSEN: dict[str, str | None] = {"project": None}


def _use_project(value: str | None) -> str | None:
    if value:
        CHOSEN["project"] = value
    return value


ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project",
        help="The project (classifier) to work on: its data, registered model and policy "
        "(`tuneloop project list`). Default: TUNELOOP_PROJECT, else the default project.",
        callback=_use_project,
        show_default=False,
    ),
]


def settings_or_exit(**overrides: Any) -> Settings:
    from tuneloop.projects import ProjectError, UnknownProject

    if CHOSEN["project"] and overrides.get("project") is None:
        overrides["project"] = CHOSEN["project"]
    try:
        return load_settings(**overrides)
    except UnknownProject as exc:
        fail(str(exc), hint="`tuneloop project list` names the declared projects")
        raise  # unreachable
    except ProjectError as exc:
        fail(str(exc), hint="fix the projects file (`tuneloop project list` reads it)")
        raise  # unreachable
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
