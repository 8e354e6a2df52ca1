"""The `continual` flow end to end under Prefect's test harness on the tiny model, and its options."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from tuneloop.registry.policy import load_policy

REGISTRY = Path(__file__).resolve().parents[1] / "registry"


def tiny_policy(tmp_path: Path, **approval: object) -> Path:
    """The demo policy with floors a one-epoch tiny random BERT can pass (its INT8 parity too)."""
    data = yaml.safe_load((REGISTRY / "policy.demo.yaml").read_text())
    data["gates"].update(min_macro_f1=0.0, min_union_macro_f1=0.0)
    data["gates"].update(max_golden_regression_points=100.0, max_per_label_drop_points=100.0)
    data["conversion"].update(
        max_abs_logit_diff_fp32=1.0, int8_max_macro_f1_drop_points=100.0, int8_min_argmax_agreement=0.0
    )
    data["approval"].update(approval)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_continual_flow_trains_approves_converts_and_rolls_out(prefect_harness, monkeypatch, tmp_path):
    from flows.continual import continual_flow

    from tuneloop.config import load_settings
    from tuneloop.registry.store import Registry
    from tuneloop.testing import make_tiny_bert

    words = {"alpha": ["apple", "banana", "cherry", "grape"], "beta": ["river", "ocean", "forest", "valley"]}
    rng = np.random.default_rng(0)
    rows = [
        {"text": " ".join(rng.choice(w, size=4)), "label": k} for k, w in words.items() for _ in range(30)
    ]
    home = tmp_path / "home"
    (home / "landing").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(home / "landing" / "drop.csv", index=False)
    for key, value in {
        "TUNELOOP_HOME": str(home),
        "TUNELOOP_BASE_MODEL": str(make_tiny_bert(tmp_path / "tiny")),
        "TUNELOOP_EPOCHS": "1",
        "TUNELOOP_LORA_MODULES_TO_SAVE": "pooler",
        "TUNELOOP_POLICY_PATH": str(tiny_policy(tmp_path, auto_approve=True)),
        "TUNELOOP_LANDING_SETTLE_SECONDS": "0",
    }.items():
        monkeypatch.setenv(key, value)

    # A data trigger with nothing ingested yet: 0 new rows < min_new_rows, so no round starts.
    quiet = continual_flow(trigger="data", service_url=None)
    assert quiet["outcome"] == "not_started" and not quiet["decision"]["start"]

    first = continual_flow(trigger="manual", service_url=None)
    assert first["ingest"]["snapshot"] == "snap-0001"
    assert first["train"]["gate"]["passed"] and first["approval"]["approved"]
    assert first["convert"]["parity"]["passed"]
    assert first["outcome"] == "promoted" and first["version"] == "1"  # first champion: no canary
    registry = Registry(load_settings())
    assert registry.alias("champion").version == "1"

    # Run again (a resumed or repeated run): every step finds its work done and nothing is redone.
    again = continual_flow(trigger="manual", service_url=None)
    assert again["outcome"] == "nothing_new"
    assert [v.version for v in registry.versions()] == ["1"]

    # A dry run with new data trains and registers a candidate but never approves or serves it.
    more = [
        {"text": " ".join(rng.choice(w, size=4)), "label": k} for k, w in words.items() for _ in range(10)
    ]
    pd.DataFrame(more).to_csv(tmp_path / "more.csv", index=False)
    from tuneloop.steps.ingest import ingest_step

    assert ingest_step(load_settings(), [tmp_path / "more.csv"])["snapshot"] == "snap-0002"
    dry = continual_flow(trigger="manual", dry_run=True, service_url=None)
    assert dry["outcome"] == "dry_run" and dry["version"] == "2"
    assert registry.get_version("2").approval == "pending"  # even under an auto-approving policy
    assert registry.alias("champion").version == "1"


def test_skip_approval_is_refused_where_the_policy_needs_a_person(tmp_path):
    from tuneloop.steps.continual import ApprovalSkipRefused, check_run_options

    needs_person = load_policy(tiny_policy(tmp_path, required=True, auto_approve=False))
    with pytest.raises(ApprovalSkipRefused, match="requires a person"):
        check_run_options(needs_person, dry_run=False, skip_approval=True)
    check_run_options(load_policy(tiny_policy(tmp_path, auto_approve=True)), False, True)
    check_run_options(load_policy(tiny_policy(tmp_path, required=False, auto_approve=False)), False, True)


class _Versions:
    """A registry stand-in whose version's approval tags change on the n-th read."""

    def __init__(self, tags_by_read: list[dict[str, str]]) -> None:
        self.reads = tags_by_read

    def get_version(self, version: str) -> SimpleNamespace:
        tags = self.reads.pop(0) if len(self.reads) > 1 else self.reads[0]
        return SimpleNamespace(version=version, tags=tags, approval=tags.get("approval", "pending"))


@pytest.mark.parametrize(
    ("reads", "approved", "sleeps"),
    [
        ([{}, {}, {"approval": "approved", "approval_by": "ana"}], True, 2),  # approved in the UI
        ([{}, {"approval": "rejected", "approval_by": "bo"}], False, 1),  # rejected: stop at once
        ([{}], False, 4),  # never: gives up after 120 s at 30 s a poll
    ],
)
def test_wait_for_approval_polls_until_approved_rejected_or_out_of_time(
    monkeypatch, tmp_path, reads, approved, sleeps
):
    from tuneloop.config import load_settings
    from tuneloop.steps.continual import wait_for_approval

    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_POLICY_PATH", str(tiny_policy(tmp_path, required=True, auto_approve=False)))
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    result = wait_for_approval(
        load_settings(),
        "3",
        timeout_s=120,
        poll_s=30,
        registry=_Versions(reads),
        sleep=sleep,
        clock=lambda: now[0],
    )
    assert result["approved"] is approved
    assert len(slept) == sleeps and sum(slept) <= 120
