"""benchmarks/demo.py: the parsing of `tuneloop demo --json` (the demo itself is minutes: not run here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.demo import demo_env, last_json, summarize

REPO = Path(__file__).resolve().parents[1]


def _ingest(rows: int, accepted: int, quarantined: int = 0) -> dict:
    return {
        "rows": rows,
        "accepted": accepted,
        "duplicates": rows - accepted - quarantined,
        "quarantined": quarantined,
    }


def _round(version: str, drop: str, outcome: str, decision: str = "") -> dict:
    return {
        "version": version,
        "drop": drop,
        "metrics": {"macro_f1": 0.97, "golden_macro_f1": 1.0},
        "outcome": outcome,
        "decision": decision,
    }


DEMO_RESULT = {
    "rounds": [
        _round("1", "base", "promoted", "first champion: promoted directly"),
        _round("2", "drift-1", "promoted", "canary passed every step"),
        _round("3", "drift-2", "refused", "gate: golden F1 dropped"),
        _round("4", "fault", "rolled_back", "error rate 0.500 > 0.01 at 5%"),
    ],
    "drops": [
        {"drop": "base", "ingest": _ingest(600, 600)},
        {"drop": "drift-1", "ingest": _ingest(107, 101, 5) | {"reasons": {"empty_text": 1}}},
        {"drop": "drift-2", "ingest": _ingest(85, 85)},
        {"drop": "again", "ingest": _ingest(0, 0)},  # nothing new: no snapshot, no round
    ],
    "champion_errors": 0,
}


def test_summary_names_versions_and_outcomes_with_reasons() -> None:
    figures = summarize(DEMO_RESULT, 81.26)
    assert figures["seconds"] == 81.3
    assert figures["versions"] == ["1", "2", "3", "4"]
    assert figures["promoted"] == ["1", "2"]
    assert figures["refused"] == [{"version": "3", "reason": "gate: golden F1 dropped"}]
    assert figures["rolled_back"] == [{"version": "4", "reason": "error rate 0.500 > 0.01 at 5%"}]
    assert figures["champion_errors"] == 0
    assert figures["drops"][1]["quarantined"] == 5 and figures["drops"][1]["reasons"]["empty_text"] == 1
    assert figures["drops"][2]["outcome"] == "refused" and figures["drops"][2]["version"] == "3"
    assert "version" not in figures["drops"][3]
    json.dumps(figures)  # the last line printed


def test_last_json_skips_log_lines_and_fails_loudly_without_one() -> None:
    out = 'loading model\n{"not": "closed"\n' + json.dumps({"rounds": []}) + "\n\n"
    assert last_json(out) == {"rounds": []}
    with pytest.raises(ValueError, match="printed no JSON object"):
        last_json("Traceback (most recent call last):\n  boom\n")


def test_the_demo_runs_on_embedded_defaults_in_its_own_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TUNELOOP_BASE_MODEL", "/somewhere/else")
    env = demo_env(tmp_path / "home", quick=False)
    assert {k for k in env if k.startswith("TUNELOOP_")} == {"TUNELOOP_HOME"}
    assert env["HF_HUB_OFFLINE"] == "1"
    assert demo_env(tmp_path / "home", quick=True)["TUNELOOP_EPOCHS"] == "1"


def test_a_missing_executable_is_a_clear_error() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "demo.py"), "--tuneloop", "/no/such/tuneloop"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "no tuneloop executable" in done.stderr
