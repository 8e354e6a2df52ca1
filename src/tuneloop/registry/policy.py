"""The promotion policy as typed data: gates, approval, conversion parity, canary, triggers; and the
whole policy, loaded and checked (the data-side sections, privacy, retention and compression, are
policy_data.py's).

The numbers live in `registry/policy.yaml` (with comments explaining each one), not here: every
threshold field is required, so a file that forgets one fails loudly instead of falling back to a
number hidden in code. Only the safe choices have defaults (approval required, no auto-approval,
anyone may approve). Unknown keys are refused too, so a typo such as `min_macro_fl` cannot silently
leave the real threshold unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tuneloop.registry.policy_data import CompressPolicy, PrivacyPolicy, RetentionPolicy
from tuneloop.registry.section import Points
from tuneloop.registry.section import Section as _Section


class GatePolicy(_Section):
    """Checks a candidate's evaluation must pass before it can be registered as promotable."""

    min_macro_f1: float = Field(
        ge=0, le=1, description="Lowest macro-F1 allowed on the new snapshot's eval split."
    )
    min_union_macro_f1: float = Field(
        ge=0, le=1, description="Lowest macro-F1 allowed on the union of the eval split and golden set."
    )
    max_golden_regression_points: Points = Field(
        ge=0,
        le=100,
        description="Largest drop of golden-set macro-F1 versus the champion, in points, over the "
        "labels the champion knew.",
    )
    max_per_label_drop_points: Points = Field(
        ge=0,
        le=100,
        description="Largest drop of any single known label's golden F1 versus the champion, in points.",
    )
    min_label_support: int = Field(
        ge=1,
        description="Golden rows a label needs before its per-label drop is judged; smaller labels "
        "are too noisy (one flipped row moves their F1 by tens of points).",
    )
    golden_drop_confidence: float = Field(
        default=0.95,
        ge=0,
        lt=1,
        description="A golden macro-F1 regression over its limit is refused only when a paired "
        "bootstrap of the golden rows puts it above zero with this confidence (0: the point estimate "
        "alone decides). Never applied to the per-label check, judged on each label's own rows.",
    )
    min_snapshot_eval_rows: int = Field(
        ge=1,
        description="Eval rows a trained snapshot needs to be judged by the new-data floor on its own; "
        "snapshots with fewer are judged together.",
    )


class ApprovalPolicy(_Section):
    """Who has to say yes before a gated candidate becomes the canary."""

    required: bool = Field(
        default=True,
        description="A version needs the tag approval=approved (set in the MLflow UI or with "
        "`tuneloop approve`) before rollout.",
    )
    auto_approve: bool = Field(
        default=False, description="The loop tags versions that pass every gate approval=approved itself."
    )
    approvers: list[str] | None = Field(
        default=None, description="Names allowed to approve; null means anyone with registry access."
    )

    @field_validator("approvers")
    @classmethod
    def _named_approvers(cls, value: list[str] | None) -> list[str] | None:
        # An empty list would mean "nobody may approve": a deadlock, never what was meant.
        if value is None:
            return None
        names = [name.strip() for name in value]
        if not names or any(not name for name in names):
            raise ValueError("approvers must be null (anyone) or a list of non-empty names")
        return names


class ConversionPolicy(_Section):
    """Parity a converted model (ONNX fp32, INT8) must keep with the PyTorch model it came from."""

    max_abs_logit_diff_fp32: float = Field(
        gt=0, description="Largest absolute logit difference allowed between PyTorch and ONNX fp32."
    )
    int8_max_macro_f1_drop_points: Points = Field(
        ge=0, le=100, description="Largest macro-F1 drop, in points, of INT8 versus fp32 on the eval set."
    )
    int8_min_argmax_agreement: float = Field(
        ge=0, le=1, description="Lowest share of rows where INT8 and fp32 predict the same label."
    )


class CanaryPolicy(_Section):
    """How a canary's share of traffic grows, and what rolls it back."""

    steps: list[float] = Field(
        min_length=1,
        description="Canary traffic percentages in order; strictly increasing, ending at 100.",
    )
    min_requests_per_step: int = Field(
        ge=1, description="Requests the canary must serve at a step before the step is judged."
    )
    min_feedback_per_step: int = Field(
        ge=1,
        description="Labelled feedback rows on each version's predictions needed before the F1 check "
        "counts; with fewer, that check is not judged at this step.",
    )
    min_shadowed_per_step: int = Field(
        ge=1,
        description="Canary items the champion also scored (shadow) needed before the shadow-agreement "
        "check counts; with fewer, that check is not judged at this step.",
    )
    max_error_rate: float = Field(ge=0, le=1, description="Highest share of canary requests that error.")
    max_p95_latency_ms: float = Field(
        gt=0,
        description="Highest 95th-percentile canary model time per item (ms): a call's time over its "
        "items, so versions whose calls carry different batch sizes compare fairly.",
    )
    max_macro_f1_drop_points: Points = Field(
        ge=0,
        le=100,
        description="Largest drop of canary macro-F1 on labelled feedback versus the champion, in points.",
    )
    max_prediction_drift: float = Field(
        ge=0,
        le=1,
        description="Largest total variation distance between canary and champion predicted-label "
        "distributions (0 = identical, 1 = disjoint).",
    )
    max_shadow_disagreement: float = Field(
        ge=0,
        le=1,
        description="Largest share of shadowed canary items on which the champion, scoring the same "
        "item, predicts another label.",
    )
    step_interval_seconds: float = Field(ge=0, description="Least time spent at each step.")
    step_deadline_seconds: float = Field(
        gt=0,
        description="Longest a step may hold: a step not judged by then (too little traffic, a "
        "missing series, no quality signal) ends the rollout; must exceed step_interval_seconds.",
    )

    @field_validator("steps")
    @classmethod
    def _steps_increase_to_full(cls, value: list[float]) -> list[float]:
        if any(not 0 < step <= 100 for step in value):
            raise ValueError(f"every step must be a percentage in (0, 100], got {value}")
        if any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError(f"steps must strictly increase, got {value}")
        if value[-1] != 100:
            raise ValueError(f"the last step must be 100 (full traffic), got {value[-1]}")
        return value

    @model_validator(mode="after")
    def _deadline_after_interval(self) -> CanaryPolicy:
        # A deadline at or before the least time a step lasts would end every rollout at step 1.
        if self.step_deadline_seconds <= self.step_interval_seconds:
            raise ValueError(
                f"step_deadline_seconds ({self.step_deadline_seconds:g}) must exceed "
                f"step_interval_seconds ({self.step_interval_seconds:g})"
            )
        return self


class TriggerPolicy(_Section):
    """When the loop starts a retraining round by itself (schedule, data landed, drift seen).

    Read by the pure `tuneloop.steps.triggers.decide_round`; a manual run (`tuneloop retrain`) is
    an operator's decision and is not subject to it.
    """

    min_new_rows: int = Field(
        ge=1, description="Rows ingested since the champion's snapshot before new data starts a round."
    )
    min_mean_confidence: float = Field(
        ge=0,
        le=1,
        description="Drift: the champion's mean top-1 probability on served traffic below this starts "
        "a round.",
    )
    max_label_mix_distance: float = Field(
        ge=0,
        le=1,
        description="Drift: total variation distance between the champion's predicted-label mix and "
        "the label mix it was trained on above this starts a round.",
    )
    min_drift_requests: int = Field(
        ge=1, description="Requests the champion must have answered before the drift signals are judged."
    )
    cooldown_seconds: float = Field(
        ge=0, description="Least time after the last round (its version's registration) before another."
    )
    max_rounds_per_day: int = Field(
        ge=1, description="Most rounds registered in any 24 hours that automatic triggers may start."
    )


class Policy(_Section):
    """The whole promotion policy, as read from `registry/policy.yaml`."""

    gates: GatePolicy = Field(description="Evaluation gates (see GatePolicy).")
    approval: ApprovalPolicy = Field(
        default=ApprovalPolicy(),
        description="Human approval (see ApprovalPolicy); the safe defaults if omitted.",
    )
    conversion: ConversionPolicy = Field(description="Conversion parity (see ConversionPolicy).")
    canary: CanaryPolicy = Field(description="Canary rollout (see CanaryPolicy).")
    privacy: PrivacyPolicy = Field(
        default=PrivacyPolicy(),
        description="Personal data redaction (see PrivacyPolicy); every entity redacted if omitted.",
    )
    triggers: TriggerPolicy | None = Field(
        default=None,
        description="Automatic retraining (see TriggerPolicy); omitted means the safe choice: rounds "
        "start only when an operator runs one.",
    )
    retention: RetentionPolicy | None = Field(
        default=None,
        description="What `tuneloop gc` removes from old versions (see RetentionPolicy); omitted means "
        "the safe choice: nothing is collected and quarantine copies are kept.",
    )
    compress: CompressPolicy | None = Field(
        default=None,
        description="Distilled students of each version (see CompressPolicy); omitted means none is "
        "built, by the loop or by `tuneloop compress`.",
    )


class PolicyError(ValueError):
    """A policy file that cannot be read or does not validate; the message names file and fields."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid policy file {path}:\n{listing}")


def check_policy_fits_data(policy: Policy, golden_per_label: int, source: Path | str = "<policy>") -> None:
    """Refuse gates that would switch themselves off for the data settings (PolicyError).

    A label needs `min_label_support` golden rows before its per-label drop is judged, and ingest
    freezes at most `golden_per_label` of them: with support above the quota no label ever qualifies,
    and the check that catches a forgotten label would pass every round without judging one.
    """
    support = policy.gates.min_label_support
    if support > golden_per_label:
        raise PolicyError(
            Path(source),
            [
                f"gates.min_label_support: {support} golden rows are needed before a label's drop is "
                f"judged, but golden_per_label freezes at most {golden_per_label} per label, so the "
                "per-label forgetting check would judge no label at all; lower min_label_support or "
                "raise golden_per_label (TUNELOOP_GOLDEN_PER_LABEL)"
            ],
        )


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(error["msg"])
    if error["type"] == "missing":
        return f"{field}: required field is missing"
    if error["type"] == "extra_forbidden":
        return f"{field}: unknown field (typo?)"
    return f"{field}: {message} (got {error.get('input')!r})"


def parse_policy(data: Any, source: Path | str = "<policy>") -> Policy:
    """Validate already-parsed YAML data into a `Policy`; `source` names it in errors."""
    path = Path(source)
    if not isinstance(data, dict):
        raise PolicyError(path, [f"(top level): expected a mapping, got {type(data).__name__}"])
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(path, [_describe(dict(err)) for err in exc.errors()]) from None


def load_policy(path: Path | str) -> Policy:
    """Read and validate a policy YAML file; raise `PolicyError` naming the file and each bad field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"policy file {path} does not exist") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(path, [f"not valid YAML: {exc}"]) from None
    return parse_policy(data, path)


def dump_policy(policy: Policy) -> str:
    """The policy as YAML (without the explanatory comments of the checked-in files)."""
    return yaml.safe_dump(policy.model_dump(mode="json"), sort_keys=False)
