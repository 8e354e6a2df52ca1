"""The CLI as a user meets it: --help, --json (one object on stdout), errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    return tmp_path


def test_help_lists_every_command_with_its_purpose():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "status", "train", "evaluate", "approve", "promote", "demo", "config"):
        assert command in result.output
    ingest_help = runner.invoke(app, ["ingest", "--help"]).output
    assert "--label-column" in ingest_help and "quarantine" in ingest_help


def test_import_and_help_stay_light():
    # `tuneloop --help` must not pay for torch, mlflow or prefect (house style: lazy heavy imports).
    code = (
        "import sys; from typer.testing import CliRunner; from tuneloop.cli import app; "
        "CliRunner().invoke(app, ['--help']); "
        "heavy = ('torch', 'mlflow', 'prefect', 'onnxruntime', 'bentoml'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_ingest_and_status_json(cli_env):
    data = cli_env / "drop.csv"
    pd.DataFrame(
        {
            "text": ["where is my parcel", "where is my parcel", "", "reset my password"],
            "label": ["track_order", "track_order", "track_order", "reset_password"],
        }
    ).to_csv(data, index=False)
    result = runner.invoke(app, ["ingest", str(data), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {k: summary[k] for k in ("rows", "accepted", "duplicates", "quarantined")} == {
        "rows": 4,
        "accepted": 2,
        "duplicates": 1,
        "quarantined": 1,
    }
    assert summary["reasons"] == {"empty_text": 1} and summary["snapshot"] == "snap-0001"

    status = json.loads(runner.invoke(app, ["status", "--json", "--no-registry"]).stdout)
    assert [s["id"] for s in status["data"]["snapshots"]] == ["snap-0001"]
    assert status["data"]["quarantine"]["reasons"] == {"empty_text": 1}


def test_missing_input_is_a_clear_error_not_a_traceback(cli_env):
    result = runner.invoke(app, ["ingest", str(cli_env / "nope.csv")])
    assert result.exit_code == 2
    assert "input not found" in result.output and "Traceback" not in result.output


def test_invalid_setting_names_the_field(cli_env, monkeypatch):
    monkeypatch.setenv("TUNELOOP_EVAL_FRACTION", "2")
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "eval_fraction" in result.output


def test_status_shows_each_alias_beside_its_version(cli_env, monkeypatch):
    import mlflow

    from tuneloop.config import load_settings
    from tuneloop.registry.store import Registry

    registry = Registry(load_settings())
    with mlflow.start_run(experiment_id=registry.experiment_id("t")) as run:
        pass
    for _ in range(3):
        registry.register(run.info.run_id, "model", {"approval": "pending", "gate": "passed"})
    registry.set_alias("champion", "2")
    registry.set_alias("previous", "1")
    registry.set_alias("challenger", "3")
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    rows = {
        cells[0]: cells[1]
        for line in result.output.splitlines()
        if len(cells := [c.strip() for c in line.strip("│┃ ").split("│")]) > 2 and cells[0].isdigit()
    }
    assert rows == {"1": "previous", "2": "champion", "3": "challenger"}
    data = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    held = [v["aliases"] for v in data["registry"]["versions"]]
    assert held == [["previous"], ["champion"], ["challenger"]]
    assert data["registry"]["aliases"] == {"previous": "1", "champion": "2", "challenger": "3"}


def test_config_and_status_never_print_the_tracking_password(cli_env, monkeypatch):
    monkeypatch.setenv("TUNELOOP_TRACKING_URI", "postgresql://ops:hunter2@db:5432/mlflow?password=hunter2")
    masked = "postgresql://ops:****@db:5432/mlflow?password=****"
    for args in (["config"], ["config", "--json"], ["status", "--no-registry", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "hunter2" not in result.output and masked in result.output, args


def test_status_lists_labels_short_of_their_golden_quota(cli_env):
    rows = [{"text": f"rare ask {i}", "label": "rare"} for i in range(4)]
    rows += [{"text": f"common ask number {i}", "label": "common"} for i in range(20)]
    pd.DataFrame(rows).to_csv(cli_env / "drop.csv", index=False)
    assert runner.invoke(app, ["ingest", str(cli_env / "drop.csv")]).exit_code == 0
    data = json.loads(runner.invoke(app, ["status", "--json", "--no-registry"]).stdout)["data"]
    assert data["golden_short"] == {"rare": 1} and data["golden_per_label"] == 5
    text = " ".join(runner.invoke(app, ["status", "--no-registry"]).output.split())
    assert "labels short of 5 golden rows" in text and "rare (1)" in text
