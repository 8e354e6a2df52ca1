"""The canary decision: one pure function from a step's traffic to advance / hold / promote / rollback.

Modelled on Argo Rollouts' analysis (each check has a success and a failure condition, and a check
whose sample is too small is inconclusive, never a pass) and Flagger's scheduler (one judgement per
reconcile tick). The figures are the traffic *since the step began* (sources.StepWindow), so a
step is judged on what happened at its own weight.

Fail fast, pass slowly: any check whose sample is large enough fails the step at once, whatever
the time spent at it. Passing needs, besides `step_interval_seconds` spent:

- at every step, error rate and latency judged on `min_requests_per_step` canary items: a missing
  series (no call counts, no per-item latency histogram) holds, it never passes;
- once during the rollout, a quality signal judged on its own minimum: shadow agreement (the
  champion scored the same items) or labelled feedback on both versions. The last step holds
  for one when no earlier step had it (at 100% the champion answers almost nothing, so feedback
  can only be compared at the earlier steps);
- prediction drift is judged whenever both versions answered the minimum (not required: at 100%
  the champion answers nothing, and shadow agreement bounds it from above).

A step still holding at `step_deadline_seconds` ends the rollout (action "rollback", the reason
saying what was missing): a quiet night, or a canary no replica could load, never holds the
rollout, and the flow run that owns it, forever.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tuneloop.rollout.counters import VersionCounters, total_variation

Action = Literal["advance", "hold", "promote", "rollback"]
QUALITY = ("shadow", "feedback")  # the checks of which one must be judged once per rollout


class CanaryRules(Protocol):
    """The `canary` section of the policy (registry.policy.CanaryPolicy has these fields)."""

    steps: list[float]
    min_requests_per_step: int
    min_feedback_per_step: int
    min_shadowed_per_step: int
    max_error_rate: float
    max_p95_latency_ms: float
    max_macro_f1_drop_points: float
    max_prediction_drift: float
    max_shadow_disagreement: float
    step_interval_seconds: float
    step_deadline_seconds: float


@dataclass(frozen=True)
class Verdict:
    """What to do now, why (in words), the figures it was decided on, and what was judged."""

    action: Action
    reasons: list[str]
    figures: dict[str, float | None] = field(default_factory=dict)
    judged: frozenset[str] = frozenset()  # checks judged on a full sample at this look

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
    quality_before: bool = False,
) -> Verdict:
    """Judge step `step_index` of `policy.steps` from per-version counters since the step began.

    `quality_before`: a quality signal (shadow agreement or feedback) was judged at an earlier step.
    """
    c = metrics_by_version.get(canary, VersionCounters())
    h = metrics_by_version.get(champion, VersionCounters()) if champion else VersionCounters()
    n, n_feedback = policy.min_requests_per_step, policy.min_feedback_per_step
    n_shadow = policy.min_shadowed_per_step
    percent = f"{policy.steps[step_index]:g}%"
    enough = c.items >= n
    rate = c.error_rate
    p95 = c.p95_ms()
    champion_p95 = h.p95_ms() if h.latency_items >= n else None  # a handful of calls is no baseline
    drift = total_variation(c.predicted, h.predicted) if enough and h.items >= n else None
    disagreement = c.shadow_disagreed / c.shadowed if c.shadowed >= n_shadow else None
    accuracy, champion_accuracy = c.feedback_accuracy, h.feedback_accuracy
    feedback_judged = c.feedback >= n_feedback and h.feedback >= n_feedback
    drop = (
        (champion_accuracy - accuracy) * 100.0
        if feedback_judged and accuracy is not None and champion_accuracy is not None
        else None
    )
    judged = {
        name
        for name, ok in (
            ("error_rate", enough and rate is not None),
            ("latency", enough and p95 is not None and c.latency_items >= n),
            ("drift", drift is not None),
            ("shadow", disagreement is not None),
            ("feedback", drop is not None),
        )
        if ok
    }
    figures: dict[str, float | None] = {
        "step": float(step_index),
        "weight_percent": float(policy.steps[step_index]),
        "elapsed_s": round(elapsed, 3),
        "canary_items": c.items,
        "champion_items": h.items,
        "canary_errors": c.errors,
        "error_rate": rate,
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
    if rate is not None and (enough or c.errors > allowed) and rate > policy.max_error_rate:
        failures.append(
            f"error rate {rate:.3f} ({c.errors:.0f} failed model calls) > {policy.max_error_rate} "
            f"at {percent}"
        )
    # Latency per item (a call's time over its items): the canary's calls at 5% hold a few items
    # and the champion's many, so per call the champion always looks slower, and at 100% the
    # reverse. Over the ceiling *and* slower than the champion on the same host and moment, so a
    # busy host (both slow) holds steady while a canary that is slower on its own is pulled.
    slow = "latency" in judged and p95 is not None and p95 > policy.max_p95_latency_ms
    if slow and p95 is not None and (champion_p95 is None or p95 > champion_p95):
        failures.append(
            f"p95 latency {p95:.0f} ms per item > {policy.max_p95_latency_ms:g} ms "
            f"(champion {_fmt(champion_p95, '.0f')} ms)"
        )
    if drift is not None and drift > policy.max_prediction_drift:
        failures.append(
            f"predicted-label drift (total variation) {drift:.3f} > {policy.max_prediction_drift} "
            f"vs champion v{champion}"
        )
    # Shadow agreement: the champion scored the same items. Label changes item by item include
    # swaps that leave the label mix as it was, so this has its own limit, above the drift one.
    if disagreement is not None and disagreement > policy.max_shadow_disagreement:
        failures.append(
            f"champion disagrees on {disagreement:.3f} of {c.shadowed:.0f} shadowed items "
            f"> {policy.max_shadow_disagreement}"
        )
    # Feedback: the service counts answers right/wrong per version (no per-label counts), so
    # accuracy on labelled feedback stands in for macro-F1 under the same limit in points.
    if drop is not None and drop > policy.max_macro_f1_drop_points:
        failures.append(
            f"feedback accuracy {_fmt(accuracy)} is {drop:.1f} points below the champion's "
            f"{_fmt(champion_accuracy)} (max {policy.max_macro_f1_drop_points:g})"
        )
    if failures:
        return Verdict("rollback", failures, figures, frozenset(judged))

    last = step_index >= len(policy.steps) - 1
    waiting: list[str] = []
    if not enough:
        waiting.append(f"canary answered {c.items:.0f} of the {n} items a step needs")
    elif "error_rate" not in judged:
        waiting.append(
            f"no model-call counts for v{canary} (tuneloop_model_seconds_count): error rate unknown"
        )
    if enough and "latency" not in judged:
        waiting.append(
            f"per-item latency of v{canary} has {c.latency_items:.0f} of {n} items "
            "(tuneloop_item_seconds): latency unknown"
        )
    if elapsed < policy.step_interval_seconds:
        waiting.append(f"{elapsed:.0f} s of the {policy.step_interval_seconds:g} s a step lasts")
    if last and not quality_before and not judged & set(QUALITY):
        waiting.append(
            f"no quality signal judged in this rollout yet: shadow agreement needs {n_shadow} shadowed "
            f"items (has {c.shadowed:.0f}), feedback {n_feedback} rows on each version "
            f"(canary {c.feedback:.0f}, champion {h.feedback:.0f})"
        )
    if waiting and elapsed >= policy.step_deadline_seconds:
        deadline = policy.step_deadline_seconds
        ended = f"step {step_index + 1} ({percent}) reached its deadline of {deadline:g} s"
        return Verdict("rollback", [f"{ended} unjudged: {w}" for w in waiting], figures, frozenset(judged))
    if waiting:
        return Verdict("hold", waiting, figures, frozenset(judged))

    passed = [
        f"error rate {_fmt(rate)} <= {policy.max_error_rate}",
        f"p95 {_fmt(p95, '.1f')} ms per item (champion {_fmt(champion_p95, '.1f')} ms)",
        f"drift {_fmt(drift)}" + ("" if drift is not None else " (not judged: too few champion items)"),
        f"shadow agreement {_fmt(figures['shadow_agreement'])}"
        + ("" if disagreement is not None else f" (not judged: under {n_shadow} items)"),
        f"feedback accuracy drop {_fmt(drop, '.1f')} points"
        + ("" if feedback_judged else f" (not judged: under {n_feedback} rows)"),
    ]
    return Verdict("promote" if last else "advance", passed, figures, frozenset(judged))
