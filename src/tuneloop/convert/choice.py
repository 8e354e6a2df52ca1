"""Which INT8 candidate to publish: a pure function over measured timings and parity verdicts.

The converter builds several INT8 variants of one model (quantize.py, variants.py), times each
beside fp32 on this host (timing.py) and judges each with the parity gate (parity.py). This module
only decides, so the rule can be tested with injected figures:

* a candidate that failed parity (or failed to build) is never chosen, whatever its speed;
* among the rest, the fastest on the serving shape wins: a short text at its own length (what a
  support assistant serves), at whichever thread count gives it the lowest median latency;
* the winner is published as model.int8.onnx; it is *served* only when it is also faster than
  fp32 at that shape and thread count, otherwise fp32 serves (`serve == "fp32"`) and the reasons
  say by how much INT8 lost;
* with no candidate passing, nothing is published as INT8, fp32 serves, and every candidate's
  reasons are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SERVING_SHAPE = "short"


def timing_key(shape: str, threads: int) -> str:
    """The key of one timing: shape ("short" or "long") and intra-op threads, e.g. "short_t2"."""
    return f"{shape}_t{threads}"


@dataclass
class CandidateFigures:
    """One INT8 candidate as measured: median ms per timing key, and its parity verdict."""

    name: str
    p50_ms: dict[str, float]
    parity_passed: bool
    reasons: list[str] = field(default_factory=list)
    agreement: dict[str, float | None] = field(default_factory=dict)  # per eval set, vs fp32
    nodes: int = 0
    bytes: int = 0
    build_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Int8Choice:
    """The decision: which candidate is model.int8.onnx (None: none), what serves, and why."""

    chosen: str | None
    serve: str  # "int8" or "fp32"
    threads: int | None  # the thread count the decision was made at (serving shape)
    reasons: list[str]
    ratio_to_fp32: float | None = None  # chosen p50 / fp32 p50 at the serving shape and threads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_threads(p50_ms: Mapping[str, float], shape: str) -> tuple[int, float] | None:
    """(threads, p50) of the fastest timing at `shape`, or None when it was not timed."""
    timed = [(int(key.rsplit("_t", 1)[1]), ms) for key, ms in p50_ms.items() if key.startswith(f"{shape}_t")]
    return min(timed, key=lambda item: (item[1], item[0])) if timed else None


def choose_int8(
    candidates: Sequence[CandidateFigures],
    fp32_p50_ms: Mapping[str, float],
    shape: str = SERVING_SHAPE,
) -> Int8Choice:
    """The fastest candidate that passed parity at `shape`; fp32 serves when none passed or won.

    Timings are medians in ms keyed by `timing_key(shape, threads)`, measured side by side with
    `fp32_p50_ms` in one run. Ties go to the earlier candidate (the listed order is the preference).
    """
    reasons: list[str] = []
    passing: list[tuple[float, int, int, CandidateFigures]] = []
    for order, cand in enumerate(candidates):
        if not cand.parity_passed:
            why = "; ".join(cand.reasons) or "parity not shown"
            reasons.append(f"{cand.name}: failed parity ({why})")
            continue
        best = best_threads(cand.p50_ms, shape)
        if best is None:
            reasons.append(f"{cand.name}: not timed at the {shape} shape")
            continue
        threads, ms = best
        passing.append((ms, order, threads, cand))
    if not passing:
        reasons.append("no INT8 candidate passed parity: fp32 serves")
        return Int8Choice(chosen=None, serve="fp32", threads=None, reasons=reasons)
    ms, _, threads, winner = min(passing, key=lambda item: (item[0], item[1]))
    for other_ms, _, other_threads, cand in passing:
        if cand is not winner:
            reasons.append(
                f"{cand.name}: passed parity, {other_ms:.2f} ms at {shape} x {other_threads} threads "
                f"vs {ms:.2f} ms for {winner.name}"
            )
    fp32_ms = fp32_p50_ms.get(timing_key(shape, threads))
    if fp32_ms is None:
        reasons.append(f"fp32 was not timed at {shape} x {threads} threads: fp32 serves")
        return Int8Choice(chosen=winner.name, serve="fp32", threads=threads, reasons=reasons)
    ratio = ms / fp32_ms
    verdict = (
        f"{winner.name}: fastest passing candidate, {ms:.2f} ms at {shape} x {threads} threads, "
        f"{ratio:.2f}x fp32 ({fp32_ms:.2f} ms)"
    )
    if ratio >= 1.0:
        reasons.append(f"{verdict}: not faster than fp32, so fp32 serves")
        return Int8Choice(winner.name, "fp32", threads, reasons, ratio)
    reasons.append(verdict)
    return Int8Choice(winner.name, "int8", threads, reasons, ratio)
