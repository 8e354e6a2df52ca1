"""Project commands of the `tuneloop` CLI: `tuneloop project add NAME` and `tuneloop project list`.

A project is one classifier with its own data, registered model, policy and canary; its
declaration is one entry in the projects file (src/tuneloop/projects.py says where and what).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tuneloop.cli.common import JsonOpt, emit, fail, out, settings_or_exit
from tuneloop.cli.tables import Column, print_table

app = typer.Typer(
    help="Declare and list projects: one classifier each, with its own landing folder, snapshots, "
    "registered model, policy, canary and serving route (/v1/<project>/classify). Every data, "
    "version or serving command takes --project NAME; without it, the default project.",
    no_args_is_help=True,
)

PROJECT_COLUMNS = [
    Column("project"),
    Column("model"),
    Column("policy", drop=2, fold_at=30),
    Column("base model", drop=3),
    Column("label column", drop=4),
    Column("data", drop=1, fold_at=30),
]


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Lower-case letters, digits and '-', starting with a letter.")],
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Its promotion policy file (default: the loop's).")
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model", help="Its base model: a folder, package:<name> or a hub id (default: the loop's)."
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option("--model-name", help="Its registered model in MLflow (default tuneloop-NAME)."),
    ] = None,
    label_column: Annotated[
        str | None,
        typer.Option("--label-column", help="Input column holding its label (default: the loop's)."),
    ] = None,
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="Input column holding its text (default: the loop's).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Declare a project. Next: drop its labelled files in the landing folder this prints (or
    `tuneloop ingest --project NAME FILES`), then `tuneloop retrain --project NAME`; give callers a
    token with `tuneloop tenant add ID --projects NAME`. `tuneloop serve` picks it up on restart."""
    from tuneloop.projects import ProjectError, add_project

    settings = settings_or_exit()
    try:
        project = add_project(
            settings,
            name,
            policy=policy,
            base_model=base_model,
            model_name=model_name,
            label_column=label_column,
            text_column=text_column,
        )
    except ProjectError as exc:
        fail(str(exc), hint="`tuneloop project list` shows the declared projects")
        raise  # unreachable
    result = _describe(settings, project.name)
    result["projects_file"] = str(settings.resolved_projects_file)
    emit(
        result,
        as_json,
        lambda r: out.print(
            f"project {r['name']} declared in {r['projects_file']}: registered model {r['model_name']}, "
            f"landing folder {r['landing']}",
            markup=False,
        ),
    )


@app.command("list")
def list_projects(
    as_json: JsonOpt = False,
    wide: Annotated[bool, typer.Option("--wide", help="Every column at full width.")] = False,
) -> None:
    """List the projects: the default one, then those declared, each with its registered model,
    policy, base model and data folder."""
    from tuneloop.projects import project_names

    settings = settings_or_exit()
    projects = [_describe(settings, name) for name in project_names(settings)]
    result = {"projects_file": str(settings.resolved_projects_file), "projects": projects}

    def render(r: dict[str, Any]) -> None:
        rows = [
            [p["name"], p["model_name"], p["policy"], p["base_model"], p["label_column"], p["data"]]
            for p in r["projects"]
        ]
        print_table(out, PROJECT_COLUMNS, rows, wide=wide, title=f"projects ({r['projects_file']})")

    emit(result, as_json, render)


def _describe(settings: Any, name: str) -> dict[str, Any]:
    """One project's effective settings, as its commands would see them."""
    from tuneloop.config import load_settings

    mine = load_settings(home=settings.home, projects_file=settings.projects_file, project=name)
    return {
        "name": name,
        "model_name": mine.model_name,
        "policy": str(mine.policy_path),
        "base_model": mine.base_model,
        "label_column": mine.label_column,
        "text_column": mine.text_column,
        "data": str(mine.data_dir),
        "landing": str(mine.landing_dir),
    }
