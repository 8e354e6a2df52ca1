"""The canary decision: one pure function from a step's traffic to advance / hold / promote / rollback.

Modelled on Argo Rollouts' analysis (each check has a success and a failure condition, and a check
whose sample is too small is inconclusive, never a pass) and Flagger's scheduler (one judgement per
reconcile tick). The figures are the traffic *since the step began* (counters.diff), so a step is
judged on what happened at its own weight.

Fail fast, pass slowly: any check whose sample is large enough fails the step at once, whatever
the time spent at it; passing needs every sample large enough *and* `step_interval_seconds` spent.
So a broken canary is pulled within one window of reaching `min_requests_per_step`, while a good one
never moves on from too little traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tuneloop.rollout.counters import VersionCounters, total_variation

Action = Literal["advance", "hold", "promote", "rollback"]


class CanaryRules(Protocol):
    """The `canary` section of the policy (registry.policy.CanaryPolicy has these fields)."""

    steps: list[float]
    min_requests_per_step: int
    min_feedback_per_step: int
    max_error_rate: float
    max_p95_latency_ms: float
    max_macro_f1_drop_points: float
    max_prediction_drift: float
    step_interval_seconds: float


@dataclass(frozen=True)
class Verdict:
    """What to do now, why (in words), and the figures it was decided on."""

    action: Action
    reasons: list[str]
    figures: dict[str, float | None] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.action == "rollback"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def judge_step(
    step_index: int,
    metrics_by_version: Mapping[str, VersionCounters],
    policy: CanaryRules,
    elapsed: float,
    *,
    canary: str,
    champion: str | None,
) -> Verdict:
    """Judge step `step_index` of `policy.steps` from per-version counters since the step began."""
    c = metrics_by_version.get(canary, VersionCounters())
    h = metrics_by_version.get(champion, VersionCounters()) if champion else VersionCounters()
    n, n_feedback = policy.min_requests_per_step, policy.min_feedback_per_step
    enough = c.items >= n
    p95, champion_p95 = c.p95_ms(), h.p95_ms()
    drift = total_variation(c.predicted, h.predicted) if h.items >= n else None
    disagreement = c.shadow_disagreed / c.shadowed if c.shadowed >= n_feedback else None
    accuracy, champion_accuracy = c.feedback_accuracy, h.feedback_accuracy
    feedback_judged = c.feedback >= n_feedback and h.feedback >= n_feedback
    drop = (
        (champion_accuracy - accuracy) * 100.0
        if feedback_judged and accuracy is not None and champion_accuracy is not None
        else None
    )
    figures: dict[str, float | None] = {
        "step": float(step_index),
        "weight_percent": float(policy.steps[step_index]),
        "elapsed_s": round(elapsed, 3),
        "canary_items": c.items,
        "champion_items": h.items,
        "canary_errors": c.errors,
        "error_rate": c.error_rate,
        "p95_ms": p95,
        "champion_p95_ms": champion_p95,
        "prediction_drift": drift,
        "shadow_agreement": None if disagreement is None else 1.0 - disagreement,
        "shadowed": c.shadowed,
        "feedback": c.feedback,
        "feedback_accuracy": accuracy,
        "champion_feedback_accuracy": champion_accuracy,
        "accuracy_drop_points": drop,
    }
    failures: list[str] = []

    # Errors: judged on a full sample, or as soon as there are more failures than a full sample may
    # hold (max_error_rate 0.01 x 200 requests = 2): waiting for more traffic would only send more
    # users to a broken model (the service answers them from the champion, but slower).
    allowed = policy.max_error_rate * n
    rate = c.error_rate
    if rate is not None and (enough or c.errors > allowed) and rate > policy.max_error_rate:
        failures.append(
            f"error rate {rate:.3f} ({c.errors:.0f} failed model calls) > {policy.max_error_rate} "
            f"at {policy.steps[step_index]:g}%"
        )
    # Latency: over the ceiling *and* slower than the champion on the same host and moment, so a
    # busy host (both slow) holds steady while a canary that is slower on its own is pulled.
    slow = enough and p95 is not None and p95 > policy.max_p95_latency_ms
    if slow and p95 is not None and (champion_p95 is None or p95 > champion_p95):
        failures.append(
            f"p95 latency {p95:.0f} ms > {policy.max_p95_latency_ms:g} ms "
            f"(champion {_fmt(champion_p95, '.0f')} ms)"
        )
    if enough and drift is not None and drift > policy.max_prediction_drift:
        failures.append(
            f"predicted-label drift (total variation) {drift:.3f} > {policy.max_prediction_drift} "
            f"vs champion v{champion}"
        )
    # Shadow agreement: the champion scored the same items. The share of items whose label changed
    # bounds the label-mix drift from above, so the drift threshold applies to it as it stands.
    if disagreement is not None and disagreement > policy.max_prediction_drift:
        failures.append(
            f"champion disagrees on {disagreement:.3f} of {c.shadowed:.0f} shadowed items "
            f"> {policy.max_prediction_drift}"
        )
    # Feedback: the service counts answers right/wrong per version (no per-label counts), so
    # accuracy on labelled feedback stands in for macro-F1 under the same limit in points.
    if drop is not None and drop > policy.max_macro_f1_drop_points:
        failures.append(
            f"feedback accuracy {_fmt(accuracy)} is {drop:.1f} points below the champion's "
            f"{_fmt(champion_accuracy)} (max {policy.max_macro_f1_drop_points:g})"
        )
    if failures:
        return Verdict("rollback", failures, figures)

    waiting: list[str] = []
    if not enough:
        waiting.append(f"canary answered {c.items:.0f} of the {n} items a step needs")
    if elapsed < policy.step_interval_seconds:
        waiting.append(f"{elapsed:.0f} s of the {policy.step_interval_seconds:g} s a step lasts")
    if waiting:
        return Verdict("hold", waiting, figures)

    passed = [
        f"error rate {_fmt(rate)} <= {policy.max_error_rate}",
        f"p95 {_fmt(p95, '.1f')} ms (champion {_fmt(champion_p95, '.1f')} ms)",
        f"drift {_fmt(drift)}, shadow agreement {_fmt(figures['shadow_agreement'])}",
        f"feedback accuracy drop {_fmt(drop, '.1f')} points"
        + ("" if feedback_judged else f" (not judged: under {n_feedback} rows)"),
    ]
    last = step_index >= len(policy.steps) - 1
    return Verdict("promote" if last else "advance", passed, figures)
