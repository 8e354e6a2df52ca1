"""The canary decision (judge_step) on plain counters, table-driven; counters from both formats."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tuneloop.rollout.analysis import judge_step
from tuneloop.rollout.counters import (
    VersionCounters,
    counters_from_samples,
    diff,
    quantile_ms,
    total_variation,
)
from tuneloop.rollout.sources import parse_prometheus_text


@dataclass
class Rules:
    steps: list[float] = field(default_factory=lambda: [10.0, 50.0, 100.0])
    min_requests_per_step: int = 100
    min_feedback_per_step: int = 50
    max_error_rate: float = 0.01
    max_p95_latency_ms: float = 150.0
    max_macro_f1_drop_points: float = 5.0
    max_prediction_drift: float = 0.25
    step_interval_seconds: float = 60.0


def buckets(ms: float, n: float) -> dict[str, float]:
    """Cumulative buckets with all `n` calls in the bucket holding `ms`."""
    bounds = [0.001 * 2**i for i in range(13)]
    return {repr(b): (n if ms / 1000 <= b else 0.0) for b in bounds} | {repr(float("inf")): n}


def version(
    items: float = 200,
    errors: float = 0,
    ms: float = 5,
    labels: dict[str, float] | None = None,
    shadow: tuple[float, float] = (0, 0),
    feedback: tuple[float, float] = (0, 0),
) -> VersionCounters:
    calls = items / 4
    return VersionCounters(
        items=items,
        errors=errors,
        calls=calls,
        latency_buckets=buckets(ms, calls),
        predicted=labels if labels is not None else {"a": items / 2, "b": items / 2},
        shadow_agreed=shadow[0],
        shadow_disagreed=shadow[1],
        feedback_correct=feedback[0],
        feedback_wrong=feedback[1],
    )


CHAMP = version(items=2000)
# (name, step index, canary counters, champion counters, elapsed, action, words in the reasons)
CASES = [
    ("healthy step advances", 0, version(), CHAMP, 61, "advance", "error rate"),
    ("healthy last step promotes", 2, version(), CHAMP, 61, "promote", "p95"),
    ("too little traffic holds", 0, version(items=40), CHAMP, 600, "hold", "40 of the 100"),
    ("too little traffic at last step never promotes", 2, version(items=99), CHAMP, 600, "hold", "99"),
    ("too early holds", 1, version(), CHAMP, 10, "hold", "10 s of the 60"),
    ("error rate over the limit rolls back", 0, version(errors=3), CHAMP, 61, "rollback", "error rate"),
    # 2 errors in 10 items: more than a full sample may hold (0.01 x 100 = 1), fail before time
    ("errors fail fast", 0, version(items=10, errors=2), CHAMP, 1, "rollback", "failed model calls"),
    ("one error in a small sample waits", 0, version(items=10, errors=1), CHAMP, 1, "hold", "10 of"),
    ("slow canary rolls back", 0, version(ms=400), CHAMP, 61, "rollback", "p95 latency"),
    (
        "slow host, both slow: not the canary",
        0,
        version(ms=400),
        version(items=2000, ms=800),
        61,
        "advance",
        "p95",
    ),
    ("label drift rolls back", 0, version(labels={"a": 200}), CHAMP, 61, "rollback", "drift"),
    ("shadow disagreement rolls back", 0, version(shadow=(30, 30)), CHAMP, 61, "rollback", "disagrees"),
    ("few shadowed items are not judged", 0, version(shadow=(5, 20)), CHAMP, 61, "advance", "shadow"),
    (
        "feedback accuracy drop rolls back",
        0,
        version(feedback=(40, 20)),
        version(items=2000, feedback=(95, 5)),
        61,
        "rollback",
        "points below",
    ),
    (
        "small feedback drop passes",
        0,
        version(feedback=(57, 3)),
        version(items=2000, feedback=(96, 4)),
        61,
        "advance",
        "accuracy drop",
    ),
    (
        "too little feedback is not judged",
        0,
        version(feedback=(10, 30)),
        version(items=2000, feedback=(95, 5)),
        61,
        "advance",
        "not judged",
    ),
]


@pytest.mark.parametrize(
    ("name", "step", "canary", "champion", "elapsed", "action", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_judge_step(name, step, canary, champion, elapsed, action, words) -> None:
    verdict = judge_step(step, {"2": canary, "1": champion}, Rules(), elapsed, canary="2", champion="1")
    assert verdict.action == action, verdict.reasons
    assert any(words in reason for reason in verdict.reasons), verdict.reasons
    assert verdict.figures["canary_items"] == canary.items


def test_no_canary_traffic_at_all_holds() -> None:
    verdict = judge_step(0, {"1": CHAMP}, Rules(), 600, canary="2", champion="1")
    assert verdict.action == "hold" and verdict.figures["error_rate"] is None


def test_quantile_interpolates_like_histogram_quantile() -> None:
    # 100 calls: 50 under 1 ms, 50 in (1, 2] ms -> rank 95 is 45/50 of the way through (1, 2]
    cumulative = {"0.001": 50.0, "0.002": 100.0, "inf": 100.0}
    assert quantile_ms(cumulative, 0.95) == pytest.approx(1.9)
    assert quantile_ms({}, 0.95) is None


def test_total_variation() -> None:
    assert total_variation({"a": 1, "b": 1}, {"a": 5, "b": 5}) == 0
    assert total_variation({"a": 1}, {"b": 3}) == 1
    assert total_variation({"a": 3, "b": 1}, {"a": 1, "b": 1}) == pytest.approx(0.25)
    assert total_variation({}, {"a": 1}) is None


EXPOSITION = """\
# HELP tuneloop_items_total Items answered
# TYPE tuneloop_items_total counter
tuneloop_items_total{model_version="1"} 30.0
tuneloop_items_total{model_version="2"} 10.0
# TYPE tuneloop_model_errors_total counter
tuneloop_model_errors_total{model_version="2"} 1.0
# TYPE tuneloop_model_seconds histogram
tuneloop_model_seconds_bucket{le="0.001",model_version="2"} 2.0
tuneloop_model_seconds_bucket{le="0.002",model_version="2"} 4.0
tuneloop_model_seconds_bucket{le="+Inf",model_version="2"} 4.0
tuneloop_model_seconds_count{model_version="2"} 4.0
tuneloop_model_seconds_sum{model_version="2"} 0.005
# TYPE tuneloop_predicted_total counter
tuneloop_predicted_total{label="a",model_version="2"} 6.0
tuneloop_predicted_total{label="b",model_version="2"} 4.0
# TYPE tuneloop_shadow_total counter
tuneloop_shadow_total{agreed="true",model_version="2"} 3.0
tuneloop_shadow_total{agreed="false",model_version="2"} 1.0
# TYPE tuneloop_feedback_total counter
tuneloop_feedback_total{correct="true",model_version="2"} 2.0
tuneloop_feedback_total{correct="false",model_version="1"} 5.0
"""


def test_counters_from_the_service_text_format_and_deltas() -> None:
    counters = counters_from_samples(parse_prometheus_text(EXPOSITION))
    two = counters["2"]
    assert (two.items, two.errors, two.calls) == (10, 1, 4)
    assert two.error_rate == pytest.approx(0.2)
    assert two.predicted == {"a": 6, "b": 4}
    assert (two.shadow_agreed, two.shadow_disagreed, two.feedback_correct) == (3, 1, 2)
    assert counters["1"].feedback_wrong == 5
    assert two.latency_buckets == {"0.001": 2, "0.002": 4, "inf": 4}
    # Two replicas sum; a delta counts only the traffic in between; a restart never goes negative.
    doubled = counters_from_samples([*parse_prometheus_text(EXPOSITION), *parse_prometheus_text(EXPOSITION)])
    delta = diff(doubled, counters)
    assert delta["2"].items == 10 and delta["2"].predicted == {"a": 6, "b": 4}
    assert diff(counters, doubled)["2"].items == 0


def test_fault_switch_hits_only_its_version_and_the_champion_answers() -> None:
    from test_serve_units import FakePredictor, Recorder
    from tuneloop.serve.breaker import CircuitBreaker
    from tuneloop.serve.bundle import Bundle, LoadedModel
    from tuneloop.serve.routing import item_key
    from tuneloop.serve.scoring import Fault, Item, score_items

    champion = LoadedModel("1", "fake", FakePredictor(["a", "b"], 0))
    canary = LoadedModel("2", "fake", FakePredictor(["a", "b"], 1))
    items = [Item("t", item_key(None, "n", i)) for i in range(40)]
    rec = Recorder()
    out = score_items(
        Bundle(champion, canary, 0.5),
        items,
        breaker=CircuitBreaker(failures=100, cooldown_s=60),
        observer=rec,
        top_k=1,
        shadow_share=0,
        fault=Fault("2", error_rate=1.0),
    )
    assert {p["model_version"] for p in out} == {"1"} and len(out) == 40
    assert ("error", "2") in rec.events and ("error", "1") not in rec.events
    Fault("1", latency_ms=0, error_rate=0).apply("1")  # configured but harmless: no raise
