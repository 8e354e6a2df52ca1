"""`tuneloop demo`'s path on the tiny model: the real service, the real canary, the real fault switch.

run_demo runs as `tuneloop demo` does (bundled data in three drops, `tuneloop serve` as a
subprocess, synthetic traffic with feedback, the bad candidate under the fault switch); only the
base model (a tiny random BERT), the epochs and the policy's floors differ. The e2e marker comes
from tests/conftest.py.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

REGISTRY = Path(__file__).resolve().parents[1] / "registry"


def tiny_demo_policy(tmp_path: Path, compress: bool = True, canary_steps: list[float] | None = None) -> Path:
    """policy.demo.yaml (its canary steps, pacing and request counts) with floors the tiny model passes.

    A 1-epoch random tiny BERT scores near chance on the bundled intents, so the quality gates and
    INT8 parity floors of the demo policy would refuse every round: they are lowered to nothing
    here. Two such models also disagree on labels by chance (they have learnt little), so the
    canary's label-drift, shadow-disagreement and feedback-accuracy ceilings are opened too. The
    error-rate and latency ceilings stay as they are: they are what rolls the bad candidate back.
    """
    data = yaml.safe_load((REGISTRY / "policy.demo.yaml").read_text())
    data["gates"].update(min_macro_f1=0.0, min_union_macro_f1=0.0)
    data["gates"].update(max_golden_regression_points=100.0, max_per_label_drop_points=100.0)
    data["gates"].update(min_label_support=3)  # the 3 golden rows per label this test freezes
    data["conversion"].update(
        max_abs_logit_diff_fp32=1.0, int8_max_macro_f1_drop_points=100.0, int8_min_argmax_agreement=0.0
    )
    data["canary"].update(
        max_prediction_drift=1.0, max_shadow_disagreement=1.0, max_macro_f1_drop_points=100.0
    )
    # The tiny model has 2 layers: a 1-layer student (the demo's 3 would be skipped), one epoch.
    data["compress"].update(depths=[1], epochs=1, enabled=compress)
    if canary_steps is not None:
        data["canary"]["steps"] = canary_steps
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tiny_demo_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **policy: Any) -> Any:
    """A fresh home on the tiny BERT under the tiny demo policy, 1 epoch, 3 golden rows a label."""
    from tuneloop.config import load_settings
    from tuneloop.testing import make_tiny_bert

    monkeypatch.setenv("TUNELOOP_POLICY_PATH", str(tiny_demo_policy(tmp_path, **policy)))
    monkeypatch.delenv("TUNELOOP_TRACKING_URI", raising=False)
    return load_settings(
        home=tmp_path / "home",
        base_model=str(make_tiny_bert(tmp_path / "tiny")),
        epochs=1,
        golden_per_label=3,
    )


def _listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


def test_demo_promotes_through_the_canary_and_rolls_back_the_bad_candidate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tuneloop.demo.report import WIDTH
    from tuneloop.demo.story import run_demo
    from tuneloop.registry.store import Registry

    settings = tiny_demo_settings(monkeypatch, tmp_path)
    lines: list[str] = []
    result = run_demo(settings, echo=lines.append)

    outcomes = [(r["drop"], r["outcome"]) for r in result["rounds"]]
    assert outcomes[0] == ("base", "promoted")
    assert ("drift-1", "promoted") in outcomes  # the first canary, promoted by rollout_step
    assert outcomes[-1] == ("fault", "rolled_back")
    by_drop = {r["drop"]: r for r in result["rounds"]}
    assert "canary passed 4 steps" in by_drop["drift-1"]["decision"]
    assert by_drop["drift-1"]["traffic"]["items"].get(by_drop["drift-1"]["version"], 0) >= 40
    bad = by_drop["fault"]
    assert "error rate" in bad["decision"]
    assert bad["traffic"]["failed_requests"] == 0 and bad["traffic"]["champion_model_errors"] == 0
    assert result["champion_errors"] == 0
    # Every version that passed its gates was compressed before its conversion, and the demo says
    # what serves each converted one and how fast against the teacher.
    compressed = [line for line in lines if line.strip().startswith("compress: 1L ")]
    assert len(compressed) == len([r for r in result["rounds"] if r["drop"] != "fault"]), lines
    converted = [r for r in result["rounds"] if r["drop"] != "fault" and "int8_agreement" in r["metrics"]]
    assert converted and all("serves" in r for r in converted)
    for r in converted:
        assert r["serves"].split()[0] in ("teacher", "student-1L") and "the teacher's fp32" in r["serves"]
    assert sum(line.strip().startswith("serves: ") for line in lines) == len(converted)
    for r in result["rounds"]:
        assert {"version", "metrics", "outcome"} <= set(r)
        assert r["outcome"] in {"promoted", "rolled_back", "refused"}

    registry = Registry(settings)
    champion = registry.alias("champion")
    assert champion is not None and champion.version == bad["copy_of"]
    assert registry.alias("canary") is None
    assert registry.get_version(bad["version"]).tags["rolled_back"] == bad["decision"]
    # gc at the end, as the nightly flow would: the first version (outside the demo retention: no
    # alias, not the newest behind the aliases) loses its bulk; what serves or may serve stays whole.
    from tuneloop.registry.retention import GC_TAG

    storage = result["storage"]
    assert storage["gc"]["bytes"] > 0 and storage["home_bytes"] > 0
    assert GC_TAG in registry.get_version("1").tags
    for alias in ("champion", "previous"):
        held = registry.alias(alias)
        assert held is None or GC_TAG not in held.tags, alias
    assert any(line.startswith("gc: 1 version(s) collected (v1)") for line in lines), lines[-6:]
    # No scratch left by successful steps: rounds, conversions, the services' BentoML homes.
    work = settings.work_dir
    assert not [p for p in (work / "rounds").iterdir()] and not [p for p in (work / "convert").iterdir()]
    assert not list((work / "demo").glob("bentoml-*"))

    print("\n".join(lines))  # what a user sees, in the test log
    # Lines fit 80 columns, save one that is a single long word (a path in a deep tmp folder).
    long = [line for line in lines if len(line) > WIDTH and " " in line.strip()]
    assert not long, long
    assert any(line.startswith("version") and "outcome" in line for line in lines)
    assert any("/docs" in line for line in lines) and any("mlflow ui" in line for line in lines)
    urls = {line.split(" at ")[1].split()[0].rstrip(",") for line in lines if "service: ready" in line}
    assert len(urls) == 2 and not any(_listening(url) for url in urls)  # both services stopped
    json.dumps(result, default=str)


def test_the_two_project_demo_runs_both_canaries_at_once_through_one_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tuneloop.config import load_settings
    from tuneloop.demo.projects import SECOND, run_projects_demo
    from tuneloop.registry.store import Registry

    # Students and the four-step canary are the one-project demo's to show: two steps here.
    settings = tiny_demo_settings(monkeypatch, tmp_path, compress=False, canary_steps=[50.0, 100.0])
    lines: list[str] = []
    result = run_projects_demo(settings, echo=lines.append)
    print("\n".join(lines))

    assert result["tenants"]["cross_project"] == 403 and result["tenants"]["throttled"] >= 1
    projects = result["projects"]
    assert projects["default"]["outcome"] == "promoted", projects["default"]
    assert projects[SECOND]["outcome"] == "rolled_back" and "error rate" in projects[SECOND]["reason"]
    for project in ("default", SECOND):
        assert projects[project]["failed_requests"] == 0, projects[project][
            "failures"
        ]  # neither project's callers saw an error
        assert projects[project]["items"].get(projects[project]["version"], 0) > 0  # the canary served
    routing = load_settings(home=tmp_path / "home", project=SECOND)
    assert Registry(settings).alias("champion").version == projects["default"]["version"]
    assert Registry(routing).alias("champion").version == "1" and Registry(routing).alias("canary") is None
    from tuneloop.steps.status import status

    # Each project's data is its own: routing learnt teams, the default project intents.
    assert set(status(routing, include_registry=False)["data"]["labels"]) == {"payments", "orders", "account"}
    assert "track_order" in status(settings, include_registry=False)["data"]["labels"]
    # Feedback landed in each project's own landing folder, credited to the tenant that sent it.
    for mine, tenant, labels in (
        (settings, "support-app", {"track_order", "refund_status"}),
        (routing, "routing-app", {"payments", "orders", "account"}),
    ):
        landed = [json.loads(p.read_text()) for p in mine.landing_dir.glob("feedback-*.jsonl")]
        assert landed and {row["tenant"] for row in landed} == {tenant}
        assert {row["label"] for row in landed} & labels
        assert tenant != "routing-app" or {row["label"] for row in landed} <= labels
