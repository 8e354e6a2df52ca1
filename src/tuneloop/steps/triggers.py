"""Whether the loop starts a retraining round by itself: a pure decision over plain numbers.

    new rows since the champion's snapshot ─┐
    champion's mean confidence, label mix ──┼─> decide_round(trigger, signals, round times, policy)
    when earlier rounds were registered ────┘        -> Decision(start, reasons)

Prefect only delivers the occasion (a cron schedule, a `tuneloop.data.landed` event, the `watch`
flow's drift check); what counts as enough, the cooldown and the daily cap are decided here, from the
policy's `triggers` section, so they hold the same under a Prefect server, `tuneloop worker` and tests.
The adapters that read these numbers from snapshots, the registry and the service live in
`steps/trigger_signals.py`. No stage imports: this module is data in, data out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.config import DEFAULT_PROJECT
from tuneloop.registry.policy import TriggerPolicy

TRIGGERS = ("manual", "schedule", "data", "drift")
DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class Signals:
    """What the decision looks at; None means "not measured" (e.g. the service was unreachable)."""

    new_rows: int = 0  # rows in snapshots newer than the champion's `data_snapshot`
    served: int = 0  # answers the champion gave, the sample behind the two figures below
    mean_confidence: float | None = None
    label_mix_distance: float | None = None
    notes: list[str] = field(default_factory=list)  # why a signal is missing, for the decision's reasons


@dataclass(frozen=True)
class Decision:
    start: bool
    trigger: str
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_mix_distance(a: Mapping[str, float], b: Mapping[str, float]) -> float | None:
    """Total variation distance between two label count tables (0 identical, 1 disjoint)."""
    total_a, total_b = sum(a.values()), sum(b.values())
    if total_a <= 0 or total_b <= 0:
        return None
    labels = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0) / total_a - b.get(k, 0) / total_b) for k in labels)


def decide_round(
    trigger: str,
    signals: Signals,
    round_times: Sequence[float],
    policy: TriggerPolicy | None,
    now: float,
) -> Decision:
    """Start a round or not, with every reason in words and figures.

    `round_times`: epoch seconds at which earlier rounds registered their versions. A manual run is
    an operator's call and always starts; automatic ones need the policy's `triggers` section, must
    respect the daily cap and the cooldown, and then start on enough new rows or on drift.
    """
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}; one of {TRIGGERS}")
    if trigger == "manual":
        return Decision(True, trigger, ["started by an operator (cooldown and daily cap do not apply)"])
    if policy is None:
        return Decision(False, trigger, ["the policy has no `triggers` section: rounds start only by hand"])
    recent = sorted(t for t in round_times if now - DAY_S < t <= now)
    if len(recent) >= policy.max_rounds_per_day:
        wait = recent[-policy.max_rounds_per_day] + DAY_S - now
        return Decision(
            False,
            trigger,
            [
                f"{len(recent)} rounds in the last 24 h reach the cap of {policy.max_rounds_per_day}; "
                f"the next may start in {wait:.0f} s"
            ],
        )
    last = max(round_times, default=None)
    if last is not None and now - last < policy.cooldown_seconds:
        return Decision(
            False,
            trigger,
            [
                f"cooling down: the last round registered {now - last:.0f} s ago "
                f"(cooldown {policy.cooldown_seconds:.0f} s)"
            ],
        )
    why, why_not = [], list(signals.notes)
    if signals.new_rows >= policy.min_new_rows:
        why.append(f"{signals.new_rows} new rows since the champion's snapshot (>= {policy.min_new_rows})")
    else:
        why_not.append(f"{signals.new_rows} new rows since the champion's snapshot (< {policy.min_new_rows})")
    if signals.served < policy.min_drift_requests:
        why_not.append(
            f"drift not judged: the champion answered {signals.served} requests "
            f"(< {policy.min_drift_requests})"
        )
    else:
        conf, dist = signals.mean_confidence, signals.label_mix_distance
        if conf is not None and conf < policy.min_mean_confidence:
            why.append(f"drift: mean confidence {conf:.3f} < {policy.min_mean_confidence}")
        elif conf is not None:
            why_not.append(f"mean confidence {conf:.3f} (>= {policy.min_mean_confidence})")
        if dist is not None and dist > policy.max_label_mix_distance:
            why.append(f"drift: label mix distance {dist:.3f} > {policy.max_label_mix_distance}")
        elif dist is not None:
            why_not.append(f"label mix distance {dist:.3f} (<= {policy.max_label_mix_distance})")
    return Decision(bool(why), trigger, why or why_not)


def read_prometheus(text: str, version: str, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """The champion's figures from the service's `/metrics` text (see tuneloop.serve.metrics).

    Returns answered (items), confidence sum and count, and predicted-label counts for `version` of
    `project` (another project's version of the same number is not this champion; a series without
    a `project` label, from a service older than projects, is the default project's).
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"answered": 0.0, "confidence_sum": 0.0, "confidence_count": 0.0, "labels": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model_version") != version:
                continue
            if sample.labels.get("project", DEFAULT_PROJECT) != project:
                continue
            if sample.name == "tuneloop_items_total":
                out["answered"] += sample.value
            elif sample.name == "tuneloop_confidence_sum":
                out["confidence_sum"] += sample.value
            elif sample.name == "tuneloop_confidence_count":
                out["confidence_count"] += sample.value
            elif sample.name == "tuneloop_predicted_total":
                label = sample.labels.get("label", "")
                out["labels"][label] = out["labels"].get(label, 0.0) + sample.value
    return out
