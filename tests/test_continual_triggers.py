"""The pure trigger decision (steps/triggers.py), table-driven, and its policy section."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.registry.policy import TriggerPolicy, load_policy
from tuneloop.steps.triggers import Signals, decide_round, label_mix_distance, read_prometheus

REGISTRY = Path(__file__).resolve().parents[1] / "registry"
NOW = 1_000_000.0
H = 3600.0
POLICY = TriggerPolicy(
    min_new_rows=200,
    min_mean_confidence=0.70,
    max_label_mix_distance=0.25,
    min_drift_requests=500,
    cooldown_seconds=6 * H,
    max_rounds_per_day=4,
)
QUIET = Signals(new_rows=0, served=1000, mean_confidence=0.9, label_mix_distance=0.05)


@pytest.mark.parametrize(
    ("name", "trigger", "signals", "rounds", "policy", "start", "says"),
    [
        ("manual always starts", "manual", QUIET, [NOW - 60] * 9, None, True, "operator"),
        ("no triggers section", "data", Signals(new_rows=10_000), [], None, False, "only by hand"),
        ("enough rows", "data", Signals(new_rows=200), [], POLICY, True, "200 new rows"),
        ("too few rows", "data", Signals(new_rows=199), [], POLICY, False, "199 new rows"),
        ("schedule with rows", "schedule", Signals(new_rows=500), [NOW - 7 * H], POLICY, True, "500 new"),
        ("low confidence", "drift", Signals(0, 600, 0.69, 0.05), [], POLICY, True, "confidence 0.690"),
        ("label mix moved", "drift", Signals(0, 600, 0.9, 0.26), [], POLICY, True, "distance 0.260"),
        ("too little traffic", "drift", Signals(0, 499, 0.1, 0.9), [], POLICY, False, "not judged"),
        ("healthy service", "drift", QUIET, [], POLICY, False, "mean confidence 0.900"),
        ("cooldown", "data", Signals(new_rows=5000), [NOW - 6 * H + 1], POLICY, False, "cooling down"),
        ("cooldown over", "data", Signals(new_rows=5000), [NOW - 6 * H], POLICY, True, "5000 new rows"),
        (
            "daily cap",
            "drift",
            Signals(0, 600, 0.1, 0.9),
            [NOW - 23 * H, NOW - 22 * H, NOW - 21 * H, NOW - 20 * H],
            POLICY.model_copy(update={"cooldown_seconds": 0}),
            False,
            "cap of 4",
        ),
        (
            "cap counts 24 h only",
            "data",
            Signals(new_rows=300),
            [NOW - 25 * H, NOW - 22 * H, NOW - 21 * H, NOW - 20 * H],
            POLICY.model_copy(update={"cooldown_seconds": 0}),
            True,
            "300 new rows",
        ),
    ],
)
def test_decide_round(name, trigger, signals, rounds, policy, start, says) -> None:
    decision = decide_round(trigger, signals, rounds, policy, NOW)
    assert decision.start is start, (name, decision.reasons)
    assert any(says in reason for reason in decision.reasons), (name, decision.reasons)


def test_cap_says_when_the_next_round_may_start() -> None:
    policy = POLICY.model_copy(update={"cooldown_seconds": 0})
    rounds = [NOW - 23 * H, NOW - 22 * H, NOW - 21 * H, NOW - 20 * H]
    decision = decide_round("data", Signals(new_rows=300), rounds, policy, NOW)
    assert "next may start in 3600 s" in decision.reasons[0]  # the oldest leaves the window in 1 h


def test_unknown_trigger_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown trigger"):
        decide_round("cron", QUIET, [], POLICY, NOW)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"x": 5, "y": 5}, {"x": 1, "y": 1}, 0.0),
        ({"x": 1}, {"y": 1}, 1.0),
        ({"x": 3, "y": 1}, {"x": 1, "y": 1}, 0.25),
        ({}, {"x": 1}, None),
    ],
)
def test_label_mix_distance(a, b, expected) -> None:
    assert label_mix_distance(a, b) == expected


def test_read_prometheus_takes_the_named_version_only() -> None:
    text = "\n".join(
        [
            "# TYPE tuneloop_items counter",
            'tuneloop_items_total{model_version="3"} 10.0',
            'tuneloop_items_total{model_version="4"} 99.0',
            "# TYPE tuneloop_confidence histogram",
            'tuneloop_confidence_bucket{le="+Inf",model_version="3"} 10.0',
            'tuneloop_confidence_sum{model_version="3"} 6.5',
            'tuneloop_confidence_count{model_version="3"} 10.0',
            "# TYPE tuneloop_predicted counter",
            'tuneloop_predicted_total{label="a",model_version="3"} 7.0',
            'tuneloop_predicted_total{label="b",model_version="3"} 3.0',
            'tuneloop_predicted_total{label="a",model_version="4"} 99.0',
            "",
        ]
    )
    figures = read_prometheus(text, "3")
    assert figures == {
        "answered": 10.0,
        "confidence_sum": 6.5,
        "confidence_count": 10.0,
        "labels": {"a": 7.0, "b": 3.0},
    }


def test_checked_in_policies_have_triggers_and_the_demo_is_faster() -> None:
    prod = load_policy(REGISTRY / "policy.yaml").triggers
    demo = load_policy(REGISTRY / "policy.demo.yaml").triggers
    assert prod is not None and demo is not None
    assert demo.cooldown_seconds < prod.cooldown_seconds
    assert demo.min_new_rows < prod.min_new_rows


def test_canary_figures_come_from_every_replica_or_from_prometheus(monkeypatch) -> None:
    from tuneloop.rollout.sources import EndpointSource, PrometheusSource
    from tuneloop.steps.metrics import metrics_source

    monkeypatch.delenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", raising=False)
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "t0k")
    source = metrics_source("http://pod-a:3000/, http://pod-b:3000")
    assert isinstance(source, EndpointSource)
    assert source.urls == ["http://pod-a:3000/metrics", "http://pod-b:3000/metrics"]
    assert source.headers == {"authorization": "Bearer t0k"}
    monkeypatch.setenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", "http://prometheus:9090")
    monkeypatch.setenv("TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR", '{job="tuneloop"}')
    fleet = metrics_source("http://pod-a:3000")
    assert isinstance(fleet, PrometheusSource) and fleet.base_url == "http://prometheus:9090"
    assert fleet.selector == '{job="tuneloop"}'
