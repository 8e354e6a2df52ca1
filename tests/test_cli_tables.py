"""The front door: `tuneloop status` and `history` read at 80 columns (a pipe, a CI log), whole with
--wide, and each version says how its last rollout went."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app
from tuneloop.cli.tables import Column, columns_that_fit, natural_width
from tuneloop.steps.status import rollout_outcome

runner = CliRunner()
REASON = "error rate 0.667 over the 0.05 limit on 12 canary calls at step 1 (5%)"


@pytest.fixture
def registry_with_history(tmp_path, monkeypatch):
    """Five versions as `make demo` leaves them, plus a canary in flight."""
    import mlflow

    from tuneloop.config import load_settings
    from tuneloop.registry.store import Registry
    from tuneloop.steps.rollout_state import write_state

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    registry = Registry(load_settings())
    with mlflow.start_run(experiment_id=registry.experiment_id("t")) as run:
        pass
    base = {
        "approval": "approved",
        "approval_by": "demo",
        "gate": "passed",
        "conversion": "passed",
        "data_snapshot": "snap-0001",
        "parent_version": "none",
        "metric.new.macro_f1": "0.9812",
        "metric.golden.macro_f1": "0.9700",
    }
    passed = {"event.20261206T100000000000.canary.passed": "{}", "promoted_at": "2026-12-06T10:00:00"}
    started = {"event.20261206T100000000000.canary.started": "{}"}
    for tags in (
        {"promoted_at": "2026-12-06T09:00:00"},
        {**passed, "data_snapshot": "snap-0002", "parent_version": "1"},
        {**passed, "data_snapshot": "snap-0003", "parent_version": "2"},
        {**started, "rolled_back": REASON, "parent_version": "3"},
        {**started, "parent_version": "3"},
    ):
        registry.register(run.info.run_id, "model", {**base, **tags})
    registry.set_alias("champion", "3")
    registry.set_alias("previous", "2")
    registry.set_alias("canary", "5")
    write_state(registry, step=1, started_at=0, champion="3", by="t", version="5")
    return registry


def version_rows(output: str) -> dict[str, list[str]]:
    """{version: its cells}, continuation lines of folded cells joined to their row."""
    rows: dict[str, list[str]] = {}
    last = None
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) < 3:
            continue
        if cells[0].isdigit():
            last = cells[0]
            rows[last] = cells
        elif last is not None and cells[0] == "" and len(cells) == len(rows[last]):
            rows[last] = [f"{a} {b}".strip() for a, b in zip(rows[last], cells, strict=True)]
    return rows


def test_status_fits_80_columns_folds_instead_of_cutting_and_shows_each_rollout(
    registry_with_history, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in result.output  # rich's cut cell: "versi…", "snap-…"
    assert "version" in result.output and "aliases" in result.output and "rollout" in result.output
    rows = version_rows(result.output)
    assert set(rows) == {"1", "2", "3", "4", "5"}
    assert rows["1"][2] == "promoted (direct)" and rows["3"][2] == "promoted (canary)"
    assert rows["4"][2] == f"rolled back: {REASON}"  # folded over lines, whole when joined
    assert rows["5"][1] == "canary" and rows["5"][2] == "canary at step 2"
    said = " ".join(result.output.split())  # the caption wraps like any text
    hidden = "golden F1, convert, serves, snapshot, parent, redacted, MB, gc"
    assert f"not shown at 80 columns: {hidden} (--wide shows them)" in said


def test_status_wide_shows_every_column_on_one_line(registry_with_history, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["status", "--wide"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "version" in line and "aliases" in line)
    for column in ("approval", "macro-F1", "golden F1", "convert", "snapshot", "parent"):
        assert column in header
    assert any(REASON in line for line in result.output.splitlines())  # not folded
    assert "not shown" not in result.output


def test_status_json_carries_the_rollout_outcome(registry_with_history):
    data = json.loads(runner.invoke(app, ["status", "--json"]).stdout)
    outcomes = {v["version"]: v["rollout"] for v in data["registry"]["versions"]}
    assert outcomes == {
        "1": "promoted (direct)",
        "2": "promoted (canary)",
        "3": "promoted (canary)",
        "4": f"rolled back: {REASON}",
        "5": "canary at step 2",
    }


def test_history_fits_80_columns(registry_with_history, monkeypatch):
    from tuneloop.steps.rollout_state import rollback_step

    rollback_step(None, reason=REASON, by="ops", registry=registry_with_history)
    monkeypatch.setenv("COLUMNS", "80")
    result = runner.invoke(app, ["history"])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "…" not in result.output and "rolled_back" in result.output


def test_rollout_outcome_reads_the_tags():
    event = "event.20261206T100000000000."
    assert rollout_outcome({}) == "-"
    assert rollout_outcome({f"{event}canary.started": "{}"}) == "canary stopped"
    assert rollout_outcome({f"{event}canary.started": "{}"}, in_flight_step=0) == "canary at step 1"
    assert rollout_outcome({"promoted_at": "t"}) == "promoted (direct)"
    assert rollout_outcome({"promoted_at": "t", f"{event}canary.passed": "{}"}) == "promoted (canary)"
    # A champion moved back to `previous` after it served: the rollback is the last word.
    assert rollout_outcome({"promoted_at": "t", "rolled_back": "bad"}) == "rolled back: bad"


def test_columns_drop_most_droppable_first_and_fold_free_text():
    columns = [Column("a"), Column("b", drop=2), Column("c", drop=1), Column("text", fold_at=10)]
    rows = [["x" * 10, "y" * 10, "z" * 10, "w" * 60]]
    assert natural_width([10, 10]) == 27
    assert columns_that_fit(columns, rows, width=200) == [0, 1, 2, 3]
    # text counts 10 wide (it folds): 10 + 10 + 10 + 10 + 13 = 53 fits 60; then b goes before c.
    assert columns_that_fit(columns, rows, width=60) == [0, 1, 2, 3]
    assert columns_that_fit(columns, rows, width=50) == [0, 2, 3]
    assert columns_that_fit(columns, rows, width=30) == [0, 3]
    assert columns_that_fit(columns, rows, width=5) == [0, 3]  # never below the always-shown ones
