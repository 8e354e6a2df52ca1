"""Build the INT8 candidates, judge each with the parity gate, time each beside fp32, publish one.

The candidates (ConversionSettings.int8_candidates; the order is the tie-break preference):

* `static`      - the calibrated Q/DQ recipe of quantize.py: per-row int8 word table, outlier
                  channels in float beside every int8 MatMul, per-token scaling of every int8 input.
* `static_merged` - the same, with Q, K and V merged into one MatMul per layer (graph_merge), so
                  the per-token scaling and the outlier side path run once per layer input rather
                  than once per MatMul.
* `static_lean` - merged, and per-token scaling only on LayerNorm outputs (Q/K/V and FFN inputs):
                  the attention-context and GELU inputs keep one static scale, 12 fewer
                  Abs/ReduceMax/Max/Div/Mul groups on MiniLM.
* `dynamic`     - ONNX Runtime's dynamic INT8 on the fused graph (QAttention, DynamicQuantizeMatMul):
                  the fewest nodes, no calibration, one activation scale per tensor per call.

Candidates are written beside the outputs as `candidate.<name>.onnx`, never under a published name;
the chosen one is renamed to model.int8.onnx (atomic), the rest are removed. The decision itself is
`choice.choose_int8`, a pure function over the figures gathered here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.choice import CandidateFigures, Int8Choice
from tuneloop.convert.parity import ParityReport, check_parity
from tuneloop.convert.quantize import (
    RECIPES,
    CalibrationManifest,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from tuneloop.convert.timing import time_models, typical_text

CANDIDATES = ("static", "static_merged", "static_lean", "dynamic")
STATIC = tuple(RECIPES)


def candidate_path(out: Path, name: str) -> Path:
    return Path(out) / f"candidate.{name}.onnx"


def build_candidate(
    name: str,
    out: Path,
    plain: Path,
    fused: Path,
    tokenizer_dir: Path,
    calibration: Sequence[str],
    **common: Any,
) -> CalibrationManifest | None:
    """Write candidate `name` to `candidate_path(out, name)`; static ones return their calibration."""
    target = candidate_path(out, name)
    if name in RECIPES:
        return quantize_int8_static(plain, target, tokenizer_dir, calibration, recipe=RECIPES[name], **common)
    if name == "dynamic":
        quantize_int8_dynamic(fused, target)
        return None
    raise ValueError(f"unknown INT8 candidate {name!r}; known: {', '.join(CANDIDATES)}")


def usable_candidates(names: Sequence[str], calibrated: bool, preset: str = "cpu") -> list[str]:
    """The requested candidates that can be built: static ones need calibration texts, and the
    `tensorrt` preset builds only `static` (the Q/DQ graph the engine is built from)."""
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown INT8 candidates {unknown}; known: {', '.join(CANDIDATES)}")
    if preset == "tensorrt":
        names = ["static"]
    kept = [n for n in names if calibrated or n not in RECIPES]
    if not kept:
        raise ValueError(f"none of the INT8 candidates {list(names)} can be built without calibration texts")
    return kept


def serving_threads(wanted: Sequence[int]) -> list[int]:
    """The requested thread counts this host has cores for (at least 1)."""
    cores = os.cpu_count() or 1
    return sorted({t for t in wanted if 1 <= t <= cores}) or [1]


def judge_and_time(
    names: Sequence[str],
    out: Path,
    fp32_path: Path,
    reference: Mapping[str, np.ndarray],
    fp32_logits: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    int8_logits: Callable[[Path], dict[str, np.ndarray]],
    thresholds: Any,
    tokenizer: Any,
    serving_texts: Sequence[str],
    *,
    max_length: int,
    threads: Sequence[int],
    calls: int,
    build_seconds: Mapping[str, float],
) -> tuple[list[CandidateFigures], dict[str, float], dict[str, ParityReport], str]:
    """Parity of every candidate, then all of them and fp32 timed side by side.

    Returns the candidates' figures, fp32's timings, each candidate's parity report, and the
    short text timed.
    """
    reports: dict[str, ParityReport] = {}
    for name in names:
        reports[name] = check_parity(
            reference, fp32_logits, int8_logits(candidate_path(out, name)), labels, thresholds
        )
    short = typical_text(tokenizer, serving_texts, max_length)
    paths = {"fp32": fp32_path, **{name: candidate_path(out, name) for name in names}}
    timings = time_models(paths, tokenizer, short, max_length, serving_threads(threads), calls)
    figures = []
    for name in names:
        report, path = reports[name], candidate_path(out, name)
        figures.append(
            CandidateFigures(
                name=name,
                p50_ms={k: round(v, 3) for k, v in timings[name].items()},
                parity_passed=report.passed,
                reasons=list(report.reasons),
                agreement={s: f.int8_argmax_agreement for s, f in report.sets.items()},
                nodes=count_nodes(path),
                bytes=path.stat().st_size,
                build_seconds=round(build_seconds.get(name, 0.0), 2),
            )
        )
    return figures, {k: round(v, 3) for k, v in timings["fp32"].items()}, reports, short


def count_nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def publish_choice(
    out: Path, names: Sequence[str], choice: Int8Choice, final: Path, keep: Path | None = None
) -> None:
    """Rename the chosen candidate to `final` (atomic); move the others to `keep` (a benchmark
    times them again) or remove them."""
    if choice.chosen is not None:
        os.replace(candidate_path(out, choice.chosen), final)
    for name in names:
        if keep is not None and candidate_path(out, name).is_file():
            keep.mkdir(parents=True, exist_ok=True)
            os.replace(candidate_path(out, name), keep / f"{name}.onnx")
        candidate_path(out, name).unlink(missing_ok=True)


def timed_build(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


@dataclass
class EvalLogits:
    """Reference logits computed once per conversion, and how to get a candidate's."""

    reference: dict[str, np.ndarray]  # PyTorch, per eval set
    fp32: dict[str, np.ndarray]  # the fp32 ONNX model that serves when INT8 does not
    labels: dict[str, np.ndarray]
    of: Callable[[Path], dict[str, np.ndarray]]  # candidate path -> logits per eval set
    texts: list[str]  # every eval text: the typical serving text is picked from them
    tokenizer: Any


@dataclass
class Int8Outcome:
    """Everything the INT8 step decided and measured."""

    choice: Int8Choice
    candidates: list[CandidateFigures]
    report: ParityReport  # the chosen candidate's parity, or fp32's alone when none was chosen
    calibration: CalibrationManifest | None  # the chosen static candidate's record
    fp32_p50_ms: dict[str, float] = field(default_factory=dict)
    short_text: str = ""


def convert_int8(
    names: Sequence[str],
    out: Path,
    plain: Path,
    fused: Path,
    fp32_path: Path,
    tokenizer_dir: Path,
    calibration: Sequence[str],
    logits: EvalLogits,
    thresholds: Any,
    *,
    preset: str,
    threads: Sequence[int],
    calls: int,
    common: Mapping[str, Any],
    keep: Path | None = None,
) -> Int8Outcome:
    """Build every usable candidate, judge and time them, publish the choice as out/model.int8.onnx."""
    from tuneloop.convert.choice import choose_int8

    built = usable_candidates(names, bool(calibration), preset)
    records: dict[str, CalibrationManifest | None] = {}
    seconds: dict[str, float] = {}
    try:
        for name in built:
            extra = {"preset": preset, **common} if name in RECIPES else {}
            records[name], seconds[name] = timed_build(
                build_candidate, name, out, plain, fused, tokenizer_dir, calibration, **extra
            )
        figures, fp32_ms, reports, short = judge_and_time(
            built,
            out,
            fp32_path,
            logits.reference,
            logits.fp32,
            logits.labels,
            logits.of,
            thresholds,
            logits.tokenizer,
            logits.texts,
            max_length=int(common["max_length"]),
            threads=threads,
            calls=calls,
            build_seconds=seconds,
        )
        choice = choose_int8(figures, fp32_ms)
        publish_choice(out, built, choice, Path(out) / "model.int8.onnx", keep)
    finally:
        for name in built:  # a failure anywhere leaves no candidate file behind
            candidate_path(out, name).unlink(missing_ok=True)
    report = (
        reports[choice.chosen]
        if choice.chosen is not None
        else check_parity(logits.reference, logits.fp32, None, logits.labels, thresholds)
    )
    return Int8Outcome(
        choice=choice,
        candidates=figures,
        report=report,
        calibration=records.get(choice.chosen) if choice.chosen else None,
        fp32_p50_ms=fp32_ms,
        short_text=short,
    )
