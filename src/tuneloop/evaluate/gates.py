"""Evaluation gates: may this candidate be promoted, given the champion and the policy?

A pure function over plain data (two EvalReports and the gate thresholds); the registry adapter turns
the decision into version tags. The thresholds come in as any object with the numbers of
`GateThresholds` (the registry's `GatePolicy` is one), so this stage never imports the registry.
Gates fail closed: a set the check needs but the report lacks is a failed check, never a skipped one.

Which figures may be softened by sampling noise, and which may not:
- the golden macro-F1 regression averages many labels, so a paired bootstrap over the golden rows
  (uncertainty.py) tells retraining noise from a real drop before refusing;
- the per-label check is judged on the label's own rows, point estimate against its limit, with no
  bootstrap: a bootstrap over *all* golden rows answers "could this drop vanish if the rows were
  redrawn", and with 5 rows a label it waves through a label losing 3 of them in 14-41% of
  placements, and a label dropping from 2 of 5 to 0 of 5 always. The per-label limit itself
  (`max_per_label_drop_points`) is the allowance for noise: one row of five.
- the floors are judged on each snapshot's own eval rows as well as on the pooled ones, so a
  poisoned snapshot cannot hide behind a clean one trained in the same round.

The candidate and the champion should be scored on the same golden set in the same run (re-scoring
the champion costs one pass over a few hundred rows); comparing against scores stored when the
champion was trained breaks as soon as the golden set gains a new label's rows.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.evaluate.metrics import Scores, score
from tuneloop.evaluate.report import NEW, BackwardTransfer, EvalReport, backward_transfer
from tuneloop.evaluate.uncertainty import DropInterval, paired_drop

# Float slack when comparing against a threshold: 0.90 - 0.88 is 2.0000000000000018 points, and a
# drop of exactly the allowed maximum should pass.
_EPS = 1e-9


class GateThresholds(Protocol):
    """The numbers the gates need (read-only): what `registry.policy.GatePolicy` holds, by shape."""

    @property
    def min_macro_f1(self) -> float: ...
    @property
    def min_union_macro_f1(self) -> float: ...
    @property
    def max_golden_regression_points(self) -> float: ...
    @property
    def max_per_label_drop_points(self) -> float: ...
    @property
    def min_label_support(self) -> int: ...
    @property
    def golden_drop_confidence(self) -> float: ...
    @property
    def min_snapshot_eval_rows(self) -> int: ...


class GateCheck(BaseModel):
    """One check: its value, its threshold, and whether it passed."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Stable identifier, e.g. 'golden_macro_f1_regression'.")
    value: float | None = Field(description="Measured value; None when the input was missing.")
    threshold: float = Field(description="The policy's limit for this check.")
    passed: bool
    detail: str = Field(description="Human-readable sentence with the figures.")


class GateDecision(BaseModel):
    """The verdict: passed only if every check passed; `reasons` lists each failure in words."""

    model_config = ConfigDict(frozen=True)

    passed: bool
    reasons: list[str] = Field(description="One sentence per failed check (and per forgotten label).")
    checks: list[GateCheck]
    champion_version: str | None = Field(default=None, description="Champion compared with, if any.")
    seed: int = Field(default=0, description="Seed of the regression check's bootstrap (the round's key).")
    backward_transfer: BackwardTransfer | None = Field(
        default=None, description="Per-label golden F1 change versus the champion, if there is one."
    )

    @property
    def tag_value(self) -> str:
        """Value for the `gate` version tag: 'passed' or 'failed'."""
        return "passed" if self.passed else "failed"


def _fmt(value: float, threshold: float) -> str:
    """Points with one decimal, or more where one decimal would make value and threshold look equal."""
    for digits in (1, 2, 3):
        if f"{value:.{digits}f}" != f"{threshold:.{digits}f}" or value == threshold:
            return f"{value:.{digits}f}"
    return f"{value:.4f}"


def _check_floor(name: str, what: str, scores: Scores | None, minimum: float) -> GateCheck:
    if scores is None:
        return GateCheck(
            name=name,
            value=None,
            threshold=minimum,
            passed=False,
            detail=f"{what}: the candidate report has no such set, so it cannot be judged",
        )
    value = scores.macro_f1
    passed = value >= minimum - _EPS
    relation = "meets" if passed else "is below"
    detail = f"{what} {value:.3f} {relation} the minimum {minimum:.3f} ({scores.n} rows)"
    return GateCheck(name=name, value=value, threshold=minimum, passed=passed, detail=detail)


def _snapshot_floors(candidate: EvalReport, minimum: float, min_rows: int) -> list[GateCheck]:
    """The `new` floor on each trained snapshot's own eval rows (the parts `build_report` scored).

    A snapshot with at least `min_rows` eval rows is judged alone and named; the smaller ones are
    judged together (one wrong row out of three says nothing). With one part the pooled `new` check
    already is that snapshot's.
    """
    parts = candidate.parts(NEW)
    if len(parts) < 2:
        return []
    checks = []
    small = {name: scores for name, scores in parts.items() if scores.n < min_rows}
    for name, scores in parts.items():
        if name not in small:
            what = f"new-data macro-F1 of {name}"
            check = _check_floor(f"new_macro_f1@{name}", what, scores, minimum)
            checks.append(_with_fix(check, name))
    if small:
        labels = next(iter(small.values())).labels
        pooled = score(
            [y for s in small.values() for y in s.y_true],
            [y for s in small.values() for y in s.y_pred],
            labels,
        )
        names = ", ".join(small)
        what = f"new-data macro-F1 of the snapshots with under {min_rows} eval rows each ({names})"
        checks.append(_with_fix(_check_floor("new_macro_f1@small", what, pooled, minimum), names))
    return checks


def _with_fix(check: GateCheck, snapshots: str) -> GateCheck:
    """A failed snapshot floor says what to do: until then every round trains on that snapshot again."""
    if check.passed:
        return check
    fix = (
        f"; if the labels of {snapshots} are wrong, keep it out of every round with "
        '`tuneloop exclude SNAPSHOT --reason "..."`'
    )
    return check.model_copy(update={"detail": check.detail + fix})


def _drop_interval(
    candidate: Scores, champion: Scores, labels: list[str], policy: GateThresholds, seed: int
) -> DropInterval | None:
    """The paired bootstrap of a drop, or None: switched off (confidence 0), or no per-row
    predictions for the same rows (reports from before they were kept), where the point estimate
    alone decides, which refuses more, never less."""
    confidence = policy.golden_drop_confidence
    if not confidence or not candidate.y_true or candidate.y_true != champion.y_true:
        return None
    return paired_drop(
        candidate.y_true, champion.y_pred, candidate.y_pred, labels, confidence=confidence, seed=seed
    )


def _noise(interval: DropInterval | None) -> str:
    """'' when the drop is real (or was not tested); else why it passes as noise."""
    if interval is None or interval.real:
        return ""
    return (
        f"; within noise: in {100 * (1 - interval.confidence):.0f}% of paired resamples of the "
        f"{interval.rows} golden rows the drop is {interval.lower:.1f} points or less"
    )


def _check_regression(
    candidate: EvalReport, champion: EvalReport, policy: GateThresholds, seed: int
) -> GateCheck:
    name, limit = "golden_macro_f1_regression", policy.max_golden_regression_points
    cand, champ = candidate.golden, champion.golden
    if cand is None or champ is None:
        missing = "candidate" if cand is None else f"champion {champion.name}"
        return GateCheck(
            name=name,
            value=None,
            threshold=limit,
            passed=False,
            detail=f"golden macro-F1 vs champion {champion.name}: the {missing} has no golden scores",
        )
    # Over the labels the champion knew: new labels are judged by the floors, not as a "regression".
    labels = [
        label
        for label in champion.known_labels()
        if label in champ.per_label and champ.per_label[label].support > 0 and label in cand.per_label
    ]
    if not labels:
        return GateCheck(
            name=name,
            value=None,
            threshold=limit,
            passed=False,
            detail=f"golden macro-F1 vs champion {champion.name}: no golden rows for any label it knew",
        )
    before, after = champ.macro_f1_over(labels), cand.macro_f1_over(labels)
    drop = (before - after) * 100
    over = drop > limit + _EPS
    interval = _drop_interval(cand, champ, labels, policy, seed) if over else None
    passed = not over or (interval is not None and not interval.real)
    change = f"dropped {_fmt(drop, limit)} points" if drop > 0 else f"rose {-drop:.1f} points"
    detail = (
        f"golden macro-F1 {change} vs champion {champion.name} (max {limit:.1f}): "
        f"{before:.3f} -> {after:.3f} over the {len(labels)} labels it knew{_noise(interval)}"
    )
    return GateCheck(name=name, value=drop, threshold=limit, passed=passed, detail=detail)


def _check_per_label(
    candidate: EvalReport, champion: EvalReport, policy: GateThresholds
) -> tuple[GateCheck, list[str], BackwardTransfer | None]:
    name, limit = "golden_per_label_drop", policy.max_per_label_drop_points
    if candidate.golden is None or champion.golden is None:
        check = GateCheck(
            name=name,
            value=None,
            threshold=limit,
            passed=False,
            detail="per-label golden F1: golden scores missing, so forgetting cannot be judged",
        )
        return check, [check.detail], None
    transfer = backward_transfer(
        candidate.golden, champion.golden, champion.known_labels(), min_support=policy.min_label_support
    )
    drops = {label: -delta * 100 for label, delta in transfer.per_label.items()}
    # The label's own golden rows, point estimate against the limit: no bootstrap (module docstring).
    failing = sorted((label for label, d in drops.items() if d > limit + _EPS), key=lambda k: -drops[k])
    reasons = [
        f"golden F1 of label {label!r} dropped {_fmt(drops[label], limit)} points vs champion "
        f"{champion.name} (max {limit:.1f}; {champion.golden.per_label[label].f1:.3f} -> "
        f"{candidate.golden.per_label[label].f1:.3f}, {transfer.support[label]} rows)"
        for label in failing
    ]
    worst = max(drops.values(), default=0.0)
    if not drops:
        detail = f"per-label golden F1: no known label has {policy.min_label_support}+ golden rows"
    elif failing:
        detail = (
            f"per-label golden F1: {len(failing)} of {len(drops)} known labels dropped > {limit:.1f} points"
        )
    else:
        detail = (
            f"per-label golden F1: largest drop {max(worst, 0.0):.1f} points "
            f"over {len(drops)} labels (max {limit:.1f})"
        )
    check = GateCheck(name=name, value=worst, threshold=limit, passed=not failing, detail=detail)
    return check, reasons, transfer


def decide_gates(
    candidate: EvalReport, champion: EvalReport | None, policy: GateThresholds, *, seed: int = 0
) -> GateDecision:
    """Run every gate on the candidate's report and return the verdict with reasons and figures.

    Always: macro-F1 floors on the `new` and `union` sets (these refuse a model trained on shuffled
    labels, which scores about chance), and the `new` floor on each trained snapshot's own eval rows
    (`build_report(groups=...)`). With a champion, also: golden macro-F1 regression over the labels
    the champion knew (`champion.known_labels()`: pass `model_labels` to `build_report` for the
    champion, else they are inferred from its predictions), and per-label golden F1 drops for those
    labels with at least `min_label_support` golden rows. Without a champion (first round), only the
    floors apply. `seed` draws the regression check's bootstrap: the loop passes one derived from the
    round key, so a verdict depends on what it compares, not on how many rows another check drew.
    """
    checks = [
        _check_floor("new_macro_f1", "new-data macro-F1", candidate.new, policy.min_macro_f1),
        *_snapshot_floors(candidate, policy.min_macro_f1, policy.min_snapshot_eval_rows),
        _check_floor("union_macro_f1", "union macro-F1", candidate.union, policy.min_union_macro_f1),
    ]
    reasons = [check.detail for check in checks if not check.passed]
    transfer = None
    if champion is not None:
        regression = _check_regression(candidate, champion, policy, seed)
        per_label, label_reasons, transfer = _check_per_label(candidate, champion, policy)
        checks += [regression, per_label]
        if not regression.passed:
            reasons.append(regression.detail)
        reasons += label_reasons
    return GateDecision(
        passed=all(check.passed for check in checks),
        reasons=reasons,
        checks=checks,
        champion_version=champion.version if champion is not None else None,
        seed=seed,
        backward_transfer=transfer,
    )
