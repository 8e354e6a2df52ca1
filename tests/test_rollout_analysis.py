"""The canary decision (judge_step) on plain counters, table-driven; a step's traffic across a restart."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tuneloop.rollout.analysis import judge_step
from tuneloop.rollout.counters import (
    CounterWindow,
    VersionCounters,
    counters_from_samples,
    quantile_ms,
    reading_from_samples,
    total_variation,
)
from tuneloop.rollout.sources import parse_prometheus_text


@dataclass
class Rules:
    steps: list[float] = field(default_factory=lambda: [10.0, 50.0, 100.0])
    min_requests_per_step: int = 100
    min_feedback_per_step: int = 50
    min_shadowed_per_step: int = 40
    max_error_rate: float = 0.01
    max_p95_latency_ms: float = 150.0
    max_macro_f1_drop_points: float = 5.0
    max_prediction_drift: float = 0.25
    max_shadow_disagreement: float = 0.35
    step_interval_seconds: float = 60.0
    step_deadline_seconds: float = 600.0


def buckets(ms: float, n: float) -> dict[str, float]:
    """Cumulative buckets with all `n` observations in the bucket holding `ms`."""
    bounds = [0.001 * 2**i for i in range(13)]
    return {repr(b): (n if ms / 1000 <= b else 0.0) for b in bounds} | {repr(float("inf")): n}


def version(
    items: float = 200,
    errors: float = 0,
    call_ms: float = 20,
    per_call: float = 4,
    labels: dict[str, float] | None = None,
    shadow: tuple[float, float] = (0, 0),
    feedback: tuple[float, float] = (0, 0),
    latency: bool = True,
    calls: bool = True,
) -> VersionCounters:
    """`items` answered in calls of `per_call` items taking `call_ms` each (per item: call_ms / per_call)."""
    return VersionCounters(
        items=items,
        errors=errors,
        calls=items / per_call if calls else 0.0,
        item_latency_buckets=buckets(call_ms / per_call, items) if latency else {},
        predicted=labels if labels is not None else {"a": items / 2, "b": items / 2},
        shadow_agreed=shadow[0],
        shadow_disagreed=shadow[1],
        feedback_correct=feedback[0],
        feedback_wrong=feedback[1],
    )


CHAMP = version(items=2000)
SHADOWED = (40, 0)  # a full shadow sample, all agreed: the quality signal a promotion needs
# (name, step index, canary counters, champion counters, elapsed, action, words in the reasons)
CASES = [
    ("healthy step advances", 0, version(), CHAMP, 61, "advance", "error rate"),
    ("healthy last step promotes", 2, version(shadow=SHADOWED), CHAMP, 61, "promote", "p95"),
    ("too little traffic holds", 0, version(items=40), CHAMP, 600 - 1, "hold", "40 of the 100"),
    ("too little traffic at last step never promotes", 2, version(items=99), CHAMP, 500, "hold", "99"),
    ("too early holds", 1, version(), CHAMP, 10, "hold", "10 s of the 60"),
    # Every step ends: too little traffic at the deadline ends the rollout, it never holds forever.
    ("too little traffic at the deadline ends it", 1, version(items=40), CHAMP, 600, "rollback", "deadline"),
    ("error rate over the limit rolls back", 0, version(errors=3), CHAMP, 61, "rollback", "error rate"),
    # 2 errors in 10 items: more than a full sample may hold (0.01 x 100 = 1), fail before time
    ("errors fail fast", 0, version(items=10, errors=2), CHAMP, 1, "rollback", "failed model calls"),
    ("one error in a small sample waits", 0, version(items=10, errors=1), CHAMP, 1, "hold", "10 of"),
    # Missing series hold (never pass), then end the rollout at the deadline.
    ("no call counts hold", 0, version(calls=False), CHAMP, 61, "hold", "error rate unknown"),
    ("no latency series holds", 0, version(latency=False), CHAMP, 61, "hold", "latency unknown"),
    (
        "no latency series at the deadline ends it",
        0,
        version(latency=False),
        CHAMP,
        600,
        "rollback",
        "latency",
    ),
    # A quality signal (shadow agreement or feedback) must be judged once before promotion.
    ("last step without a quality signal holds", 2, version(), CHAMP, 61, "hold", "no quality signal"),
    ("no quality signal at the deadline ends it", 2, version(), CHAMP, 600, "rollback", "no quality signal"),
    (
        "feedback on both versions is a quality signal",
        2,
        version(feedback=(60, 0)),
        version(items=2000, feedback=(60, 0)),
        61,
        "promote",
        "accuracy drop",
    ),
    ("slow canary rolls back", 0, version(call_ms=1600), CHAMP, 61, "rollback", "p95 latency"),
    # Per item: 500 ms calls of 3 items are 167 ms an item, while the champion's 600 ms calls of 60
    # items are 10 ms an item. Per call the champion looked slower and this canary passed.
    (
        "slow canary on small batches beside big champion batches rolls back",
        0,
        version(call_ms=500, per_call=3),
        version(items=2000, call_ms=600, per_call=60),
        61,
        "rollback",
        "p95 latency",
    ),
    # At 100% the reverse: 64-item calls of 300 ms are 4.7 ms an item, beside the champion's
    # 20 ms single shadow calls. Per call this healthy canary was "slower than the champion".
    (
        "healthy canary on big batches beside small champion calls promotes",
        2,
        version(items=640, call_ms=300, per_call=64, shadow=SHADOWED),
        version(items=100, call_ms=20, per_call=1),
        61,
        "promote",
        "p95",
    ),
    (
        "slow host, both slow: not the canary",
        0,
        version(call_ms=1600),
        version(items=2000, call_ms=3200),
        61,
        "advance",
        "p95",
    ),
    ("label drift rolls back", 0, version(labels={"a": 200}), CHAMP, 61, "rollback", "drift"),
    ("shadow disagreement rolls back", 0, version(shadow=(30, 30)), CHAMP, 61, "rollback", "disagrees"),
    # Shadow disagreement has its own limit (0.35), not the drift one (0.25): 0.30 passes.
    (
        "shadow disagreement under its own limit passes",
        0,
        version(shadow=(28, 12)),
        CHAMP,
        61,
        "advance",
        "0.700",
    ),
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


def test_a_quality_signal_judged_at_an_earlier_step_lets_the_last_step_promote() -> None:
    # At 100% the champion answers nothing, so its feedback can only be compared at earlier steps.
    verdict = judge_step(2, {"2": version(), "1": CHAMP}, Rules(), 61, canary="2", champion="1")
    assert verdict.action == "hold"
    earlier = judge_step(
        0,
        {"2": version(feedback=(60, 0)), "1": version(items=2000, feedback=(60, 0))},
        Rules(),
        61,
        canary="2",
        champion="1",
    )
    assert earlier.action == "advance" and "feedback" in earlier.judged
    later = judge_step(
        2, {"2": version(), "1": CHAMP}, Rules(), 61, canary="2", champion="1", quality_before=True
    )
    assert later.action == "promote", later.reasons


def test_no_canary_traffic_at_all_holds() -> None:
    verdict = judge_step(0, {"1": CHAMP}, Rules(), 599, canary="2", champion="1")
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


def test_latency_is_judged_per_item_from_the_service_series() -> None:
    """At 5% the canary's 500 ms calls hold 3 items, the champion's 600 ms calls 60 (the review's case).

    Per call the canary (p95 ~500 ms) looked faster than the champion (~1,000 ms) and passed the
    150 ms ceiling; per item it is 167 ms against 10 ms.
    """
    text = ""
    for version, calls, call_s, items in (("2", 40, 0.5, 120), ("1", 40, 0.6, 2400)):
        v = f'model_version="{version}"'
        item_s = call_s * calls / items
        call_le = next(b for b in (0.001 * 2**i for i in range(13)) if b >= call_s)
        item_le = next(b for b in (0.001 * 2**i for i in range(13)) if b >= item_s)
        text += (
            f"tuneloop_items_total{{{v}}} {items}\n"
            f'tuneloop_model_seconds_bucket{{le="{call_le!r}",{v}}} {calls}\n'
            f'tuneloop_model_seconds_bucket{{le="+Inf",{v}}} {calls}\n'
            f"tuneloop_model_seconds_count{{{v}}} {calls}\n"
            f'tuneloop_item_seconds_bucket{{le="{item_le!r}",{v}}} {items}\n'
            f'tuneloop_item_seconds_bucket{{le="+Inf",{v}}} {items}\n'
        )
    counters = counters_from_samples(parse_prometheus_text(text))
    verdict = judge_step(0, counters, Rules(min_requests_per_step=100), 61, canary="2", champion="1")
    assert verdict.action == "rollback" and "p95 latency" in verdict.reasons[0], verdict.reasons
    assert verdict.figures["p95_ms"] > 150 > verdict.figures["champion_p95_ms"]


def exposition(version: str, items: float, errors: float, calls: float) -> str:
    """One replica's /metrics for one version: `items` answered by `calls` calls, each item in (1, 2] ms."""
    le = "0.002"
    v = f'model_version="{version}"'
    return (
        "# TYPE tuneloop_items_total counter\n"
        f"tuneloop_items_total{{{v}}} {items}\n"
        "# TYPE tuneloop_model_errors_total counter\n"
        f"tuneloop_model_errors_total{{{v}}} {errors}\n"
        "# TYPE tuneloop_model_seconds histogram\n"
        f'tuneloop_model_seconds_bucket{{le="+Inf",{v}}} {calls}\n'
        f"tuneloop_model_seconds_count{{{v}}} {calls}\n"
        f"tuneloop_model_seconds_sum{{{v}}} 0\n"
        "# TYPE tuneloop_item_seconds histogram\n"
        f'tuneloop_item_seconds_bucket{{le="{le}",{v}}} {items}\n'
        f'tuneloop_item_seconds_bucket{{le="+Inf",{v}}} {items}\n'
        f"tuneloop_item_seconds_count{{{v}}} {items}\n"
        f"tuneloop_item_seconds_sum{{{v}}} 0\n"
        "# TYPE tuneloop_shadow_total counter\n"
        f'tuneloop_shadow_total{{agreed="true",{v}}} {items / 2}\n'
    )


def reading(**replicas: str) -> dict:
    return {
        k: v
        for name, text in replicas.items()
        for k, v in reading_from_samples(name, parse_prometheus_text(text)).items()
    }


def test_a_replica_restart_mid_step_leaves_a_good_canary_advancing() -> None:
    """Replica a restarts mid-step (its counters start again from 0); b keeps counting, 3 routine errors.

    Fleet-wide sums clamped field by field gave this canary calls 0 and errors 3: an error rate
    of 1.0 and a rollback. Per series and per replica, a reset series gained its whole new value.
    """
    window = CounterWindow()
    window.add(reading(a=exposition("2", 1000, 0, 250), b=exposition("2", 50, 0, 12)))  # the step begins
    window.add(reading(a=exposition("2", 1600, 0, 400), b=exposition("2", 400, 0, 100)))
    after = window.add(reading(a=exposition("2", 200, 0, 50), b=exposition("2", 700, 3, 175)))
    canary = after["2"]
    assert canary.items == (1600 - 1000) + 200 + (700 - 50)  # a: 600 then 200 after its restart
    assert canary.errors == 3 and canary.calls == (400 - 250) + 50 + (175 - 12)
    assert canary.error_rate == pytest.approx(3 / (3 + 363))
    assert canary.p95_ms() is not None  # the buckets stayed cumulative
    rules = Rules(max_error_rate=0.01, min_shadowed_per_step=10)
    verdict = judge_step(0, after, rules, 61, canary="2", champion=None)
    assert verdict.action == "advance", verdict.reasons
    # A replica first seen mid-step is a baseline: its history is not this step's traffic.
    late = window.add(
        reading(
            a=exposition("2", 200, 0, 50), b=exposition("2", 700, 3, 175), c=exposition("2", 9000, 90, 2250)
        )
    )
    assert late["2"].items == canary.items and late["2"].errors == 3


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
