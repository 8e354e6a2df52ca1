"""Judging a student against its teacher: a pure function over predicted labels.

A student is judged like a round's candidate, with its teacher in the champion's place, on each
set (the version's eval rows and its golden set) separately:

- `macro_f1_drop`: the student's macro-F1 is more than `max_f1_drop_points` under the teacher's;
- `agreement`: student and teacher predict the same label on less than `min_agreement` of the rows;
- `per_label_drop`: a label with at least `min_label_support` rows in the set lost more than
  `max_per_label_drop_points` of F1 against the teacher. The gates' forgetting check: a student that
  drops a label is refused however well the macro average hides it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StudentLimits:
    """The numbers a student is judged by: the policy's `compress` section and, for the per-label
    check, the gates' own (`gates.max_per_label_drop_points`, `gates.min_label_support`)."""

    max_f1_drop_points: float
    min_agreement: float
    max_per_label_drop_points: float
    min_label_support: int


@dataclass(frozen=True)
class Predictions:
    """One set's rows: the true labels, the teacher's predicted labels and the student's."""

    truth: Sequence[str]
    teacher: Sequence[str]
    student: Sequence[str]


@dataclass
class StudentVerdict:
    """Passed or not, every reason it did not, and the figures of each set judged."""

    passed: bool
    reasons: list[str]
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def judge_student(sets: Mapping[str, Predictions], limits: StudentLimits) -> StudentVerdict:
    """Judge a student on every non-empty set by the three checks above; passed only if all hold."""
    reasons: list[str] = []
    figures: dict[str, dict[str, Any]] = {}
    for name, rows in sets.items():
        n = len(rows.truth)
        if not len(rows.teacher) == len(rows.student) == n:
            raise ValueError(f"{name}: truth, teacher and student need one label per row")
        if n == 0:
            continue
        fig = _figures(rows, limits.min_label_support)
        figures[name] = fig
        if fig["macro_f1_drop_points"] > limits.max_f1_drop_points:
            reasons.append(
                f"{name}: macro-F1 {fig['student_macro_f1']:.4f} is {fig['macro_f1_drop_points']:.2f} points "
                f"under the teacher's {fig['teacher_macro_f1']:.4f} (limit {limits.max_f1_drop_points:g})"
            )
        if fig["agreement"] < limits.min_agreement:
            reasons.append(
                f"{name}: agrees with the teacher on {fig['agreement']:.4f} of {n} rows "
                f"(at least {limits.min_agreement:g} needed)"
            )
        for label, drop in fig["per_label_drop_points"].items():
            if drop > limits.max_per_label_drop_points:
                reasons.append(
                    f"{name}: label {label!r} lost {drop:.1f} points of F1 against the teacher "
                    f"(limit {limits.max_per_label_drop_points:g})"
                )
    if not figures:
        reasons.append("no rows to judge the student on")
    return StudentVerdict(passed=not reasons, reasons=reasons, sets=figures)


def macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Macro-F1 over the labels present in `truth` (a label absent from a set cannot be scored)."""
    from sklearn.metrics import f1_score

    truth, predicted = [str(x) for x in truth], [str(x) for x in predicted]
    if not truth:
        return 0.0
    return float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0))


def _figures(rows: Predictions, min_support: int) -> dict[str, Any]:
    from sklearn.metrics import f1_score

    truth = [str(x) for x in rows.truth]
    teacher = [str(x) for x in rows.teacher]
    student = [str(x) for x in rows.student]
    # Macro-F1 over the labels the set holds, as the train and evaluate stages score it: a label
    # absent from the set cannot be scored, whatever either model predicts.
    present = sorted(set(truth))
    per_teacher = f1_score(truth, teacher, labels=present, average=None, zero_division=0)
    per_student = f1_score(truth, student, labels=present, average=None, zero_division=0)
    support = {label: truth.count(label) for label in present}
    drops = {
        label: round(100 * float(t - s), 2)
        for label, t, s in zip(present, per_teacher, per_student, strict=True)
        if support[label] >= min_support
    }
    teacher_f1, student_f1 = float(per_teacher.mean()), float(per_student.mean())
    return {
        "n": len(truth),
        "teacher_macro_f1": round(teacher_f1, 6),
        "student_macro_f1": round(student_f1, 6),
        "macro_f1_drop_points": round(100 * (teacher_f1 - student_f1), 2),
        "agreement": round(sum(a == b for a, b in zip(teacher, student, strict=True)) / len(truth), 6),
        "labels_judged": len(drops),
        "per_label_drop_points": drops,
    }
