"""Does a converted model still say what the PyTorch model says? Pure functions over logits.

For each named set (the eval split, the golden set) three figures are checked against policy:
fp32 ONNX max |logit - torch logit|, INT8 macro-F1 drop versus fp32 ONNX in points, and the share
of texts where INT8 and fp32 pick the same class. A report that fails still carries every figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

THRESHOLD_KEYS = ("max_abs_logit_diff_fp32", "int8_max_macro_f1_drop_points", "int8_min_argmax_agreement")


@dataclass(frozen=True)
class ParityThresholds:
    """Conversion gates (the policy file's `conversion` section supplies the real values).

    fp32 ONNX differs from eager PyTorch only by kernel summation order and fused ops: about 1e-5
    on MiniLM logits, so 1e-3 leaves room without letting a wrong graph through.
    """

    max_abs_logit_diff_fp32: float = 1e-3
    int8_max_macro_f1_drop_points: float = 0.5
    int8_min_argmax_agreement: float = 0.995


def coerce_thresholds(source: Any) -> ParityThresholds:
    """Thresholds from a dict, any object with the three attributes, or None (defaults)."""
    if source is None:
        return ParityThresholds()
    if isinstance(source, ParityThresholds):
        return source
    values: dict[str, Any] = {
        key: source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
        for key in THRESHOLD_KEYS
    }
    missing = [key for key, value in values.items() if value is None]
    if missing:
        raise ValueError(f"conversion thresholds lack {missing}")
    return ParityThresholds(**{key: float(value) for key, value in values.items()})


@dataclass
class SetParity:
    """Figures for one named set of texts."""

    n: int
    fp32_max_abs_logit_diff: float
    torch_macro_f1: float
    fp32_macro_f1: float
    int8_macro_f1: float | None
    int8_macro_f1_drop_points: float | None
    int8_argmax_agreement: float | None
    int8_max_abs_logit_diff: float | None


@dataclass
class ParityReport:
    """Per-set figures, the thresholds they were judged by, and why it failed if it did."""

    passed: bool
    sets: dict[str, SetParity]
    thresholds: ParityThresholds
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParityReport:
        """Inverse of `to_dict` (for a report read back from conversion.json)."""
        return cls(
            passed=bool(data["passed"]),
            sets={name: SetParity(**figures) for name, figures in data["sets"].items()},
            thresholds=ParityThresholds(**data["thresholds"]),
            reasons=list(data.get("reasons", [])),
        )


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Macro-averaged F1 over the classes present in either array (as scikit-learn averages)."""
    true, pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if true.size == 0:
        return 0.0
    scores = []
    for label in np.union1d(true, pred):
        tp = float(np.sum((pred == label) & (true == label)))
        fp = float(np.sum((pred == label) & (true != label)))
        fn = float(np.sum((pred != label) & (true == label)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def _as_sets(value: Any) -> dict[str, np.ndarray]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {name: np.asarray(item) for name, item in value.items()}
    return {"eval": np.asarray(value)}


def compare_set(
    torch_logits: ArrayLike, fp32_logits: ArrayLike, int8_logits: ArrayLike | None, y_true: ArrayLike
) -> SetParity:
    """The figures for one set; `int8_logits` None when no INT8 model was made."""
    ref, fp32 = np.asarray(torch_logits, dtype=np.float64), np.asarray(fp32_logits, dtype=np.float64)
    labels = np.asarray(y_true)
    if ref.shape != fp32.shape or len(labels) != len(ref):
        raise ValueError(f"shape mismatch: torch {ref.shape}, fp32 {fp32.shape}, labels {len(labels)}")
    fp32_f1 = macro_f1(labels, fp32.argmax(1)) if len(ref) else 0.0
    figures = SetParity(
        n=len(ref),
        fp32_max_abs_logit_diff=float(np.max(np.abs(fp32 - ref))) if len(ref) else 0.0,
        torch_macro_f1=macro_f1(labels, ref.argmax(1)) if len(ref) else 0.0,
        fp32_macro_f1=fp32_f1,
        int8_macro_f1=None,
        int8_macro_f1_drop_points=None,
        int8_argmax_agreement=None,
        int8_max_abs_logit_diff=None,
    )
    if int8_logits is not None and len(ref):
        int8 = np.asarray(int8_logits, dtype=np.float64)
        if int8.shape != fp32.shape:
            raise ValueError(f"shape mismatch: int8 {int8.shape}, fp32 {fp32.shape}")
        figures.int8_macro_f1 = macro_f1(labels, int8.argmax(1))
        figures.int8_macro_f1_drop_points = 100.0 * (fp32_f1 - figures.int8_macro_f1)
        figures.int8_argmax_agreement = float(np.mean(int8.argmax(1) == fp32.argmax(1)))
        figures.int8_max_abs_logit_diff = float(np.max(np.abs(int8 - fp32)))
    return figures


def int8_reasons(what: str, s: SetParity, limits: ParityThresholds) -> list[str]:
    """Why an int8 model (INT8 ONNX or a TensorRT engine) fails the policy on one set, if it does."""
    reasons = []
    drop, agree = s.int8_macro_f1_drop_points, s.int8_argmax_agreement
    if drop is not None and drop > limits.int8_max_macro_f1_drop_points:
        reasons.append(f"{what} macro-F1 drop {drop:.2f} points > {limits.int8_max_macro_f1_drop_points:.2f}")
    if agree is not None and agree < limits.int8_min_argmax_agreement:
        reasons.append(f"{what} argmax agreement {agree:.4f} < {limits.int8_min_argmax_agreement:.4f}")
    return reasons


def check_parity(
    torch_logits: Mapping[str, ArrayLike] | ArrayLike,
    fp32_logits: Mapping[str, ArrayLike] | ArrayLike,
    int8_logits: Mapping[str, ArrayLike] | ArrayLike | None,
    y_true: Mapping[str, ArrayLike] | ArrayLike,
    thresholds: Any = None,
) -> ParityReport:
    """Judge a conversion on every named set. Arrays alone are one set named "eval".

    Logits are [n, num_labels]; `y_true` holds class indices. `thresholds` is a dict or any object
    with `max_abs_logit_diff_fp32`, `int8_max_macro_f1_drop_points`, `int8_min_argmax_agreement`.
    """
    limits = coerce_thresholds(thresholds)
    ref, fp32, int8, labels = (_as_sets(v) for v in (torch_logits, fp32_logits, int8_logits, y_true))
    if set(ref) != set(fp32) or set(ref) != set(labels) or (int8 and set(int8) != set(ref)):
        raise ValueError("torch, fp32, int8 and label sets must have the same names")
    sets = {name: compare_set(ref[name], fp32[name], int8.get(name), labels[name]) for name in ref}
    reasons: list[str] = []
    for name, s in sets.items():
        if s.fp32_max_abs_logit_diff > limits.max_abs_logit_diff_fp32:
            reasons.append(
                f"{name}: fp32 max |logit diff| {s.fp32_max_abs_logit_diff:.3g} > "
                f"{limits.max_abs_logit_diff_fp32:.3g}"
            )
        reasons += int8_reasons(f"{name}: int8", s, limits)
    if not sets:
        reasons.append("no evaluation set was given, so parity was not shown")
    return ParityReport(passed=not reasons, sets=sets, thresholds=limits, reasons=reasons)
