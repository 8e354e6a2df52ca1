"""Which model of a version serves, its teacher or one of its students: a pure function over timings.

A version may carry distilled students (the compress stage) beside its own merged model, the
teacher. Each model that may serve is converted on its own (its INT8 judged against its own fp32,
pipeline.py) and then timed beside the others on this host (timing.py), each in the form its own
conversion would serve (INT8, or fused fp32 where its INT8 lost or failed). This module decides:

* a model whose conversion failed parity is never chosen;
* among the rest, the fastest at the serving shape (a short text at its own length, at whichever
  thread count is fastest for it) wins; ties go to the teacher, which is listed first;
* the figures say each model's p50 over the teacher's fp32 and over the teacher as it would serve,
  at the same shape and threads, so the choice can be read without re-running it.

Accuracy is not weighed here: a student reaches this list only when the compress stage's judge
passed it against the teacher (macro-F1 within the policy's points, agreement, per-label drops).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tuneloop.convert.choice import SERVING_SHAPE, best_threads, timing_key

TEACHER = "teacher"


@dataclass
class ServedFigures:
    """One model as it would serve: `name` ("teacher" or a student's "3L"), its form and timings."""

    name: str
    form: str  # "int8" or "fp32": what its own conversion serves
    p50_ms: dict[str, float]  # timing_key(shape, threads) -> median ms, side by side with the others
    parity_passed: bool
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ServedChoice:
    """The decision: which model serves, in which form, at which threads, and why."""

    chosen: str
    form: str
    threads: int | None
    reasons: list[str]
    # chosen p50 over the teacher's fp32 and over the teacher as served, at the serving shape.
    ratio_to_teacher_fp32: float | None = None
    ratio_to_teacher: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_served(
    models: Sequence[ServedFigures],
    teacher_fp32_p50_ms: Mapping[str, float],
    shape: str = SERVING_SHAPE,
) -> ServedChoice:
    """The fastest model that passed its conversion's parity; `models[0]` must be the teacher."""
    if not models or models[0].name != TEACHER:
        raise ValueError("the teacher comes first: it is what serves when no student is faster")
    teacher = models[0]
    reasons: list[str] = []
    timed: list[tuple[float, int, int, ServedFigures]] = []
    for order, model in enumerate(models):
        if not model.parity_passed:
            reasons.append(f"{model.name}: conversion failed parity ({'; '.join(model.reasons) or '-'})")
            continue
        best = best_threads(model.p50_ms, shape)
        if best is None:
            reasons.append(f"{model.name}: not timed at the {shape} shape")
            continue
        timed.append((best[1], order, best[0], model))
    if not timed or timed[0][3] is not teacher:
        # The teacher's own conversion decides whether the version serves at all (convert.py).
        raise ValueError("the teacher must pass parity and be timed before a student is weighed")
    ms, _, threads, winner = min(timed, key=lambda item: (item[0], item[1]))

    def ratio(of: Mapping[str, float], key: str) -> float | None:
        base = of.get(key)
        return round(ms / base, 4) if base else None

    key = timing_key(shape, threads)
    to_fp32, to_teacher = ratio(teacher_fp32_p50_ms, key), ratio(teacher.p50_ms, key)
    for other_ms, _, other_threads, model in timed:
        if model is not winner:
            reasons.append(
                f"{model.name} ({model.form}): {other_ms:.2f} ms at {shape} x {other_threads} threads"
            )
    verdict = f"{winner.name} ({winner.form}) serves: fastest that passed, {ms:.2f} ms at {shape}"
    verdict += f" x {threads} threads"
    if to_fp32 is not None:
        verdict += f", {to_fp32:.2f}x the teacher's fp32"
    if winner is not teacher and to_teacher is not None:
        verdict += f", {to_teacher:.2f}x the teacher as it would serve"
    reasons.insert(0, verdict)
    return ServedChoice(winner.name, winner.form, threads, reasons, to_fp32, to_teacher)
