"""The students half of a conversion: convert each passing student, time them beside the teacher, choose.

    students tag (passed ones) ─> download_student (every byte verified) ─> convert_model, the same
        settings, calibration and eval sets as the teacher: its INT8 judged against ITS OWN fp32
      └─> the teacher's fp32, the teacher as it would serve, and each student as it would serve,
          timed side by side in one run on this host (convert/timing.py) ─> choose_served

The student's accuracy against the teacher was judged when it was built (steps/compress.py); what
this adds is what the conversion adds for any model: parity of its graphs with its own PyTorch
weights, and a speed measured beside the alternatives rather than taken from another run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.steps.students import download_student, read_students_tag

TEACHER = "teacher"


def passing_students(tags: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """{"3L": entry} of every student the version records as passed, shallowest first."""
    entries = read_students_tag(tags)
    return {f"{d}L": entries[d] for d in sorted(entries, key=int) if entries[d].get("passed")}


def serves_tag(name: str) -> str:
    """The `serves` tag's value: "teacher", or "student-3L"."""
    return TEACHER if name == TEACHER else f"student-{name}"


def student_of(serves: str | None) -> str | None:
    """ "3L" for a `serves` tag "student-3L"; None for the teacher or no tag."""
    return serves.removeprefix("student-") if serves and serves.startswith("student-") else None


def convert_students(
    settings: Settings,
    version: str,
    students: Mapping[str, dict[str, Any]],
    work: Path,
    calibration: Sequence[str] | None,
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    thresholds: Any,
    conv: Any,
    int8_candidates: Sequence[str] | None = None,
) -> dict[str, Any]:
    """{"3L": ConversionResult} for each student, converted as the teacher was.

    With the teacher's INT8 recipe only (`int8_candidates`, when given): the recipes differ in graph
    edits that apply alike to any depth of one architecture, and building, judging and timing
    every candidate again for each student would repeat most of the teacher's conversion.
    """
    from dataclasses import replace

    from tuneloop.convert.pipeline import convert_model

    if int8_candidates:
        conv = replace(conv, int8_candidates=tuple(int8_candidates))
    results: dict[str, Any] = {}
    for name in students:
        folder = download_student(settings, version, int(name.removesuffix("L")), work / "students")
        results[name] = convert_model(folder, work / f"out-{name}", calibration, eval_sets, thresholds, conv)
    return results


def served_form(result: Any) -> tuple[str, Path]:
    """("int8" | "fp32", the graph) a conversion result would serve: its INT8 where it won."""
    from tuneloop.convert.reference import fp32_path

    out = Path(result.out_dir)
    choice = result.int8_choice
    if (out / "model.int8.onnx").is_file() and choice is not None and choice.serve == "int8":
        return "int8", out / "model.int8.onnx"
    return "fp32", fp32_path(out)


def choose_what_serves(
    teacher: Any, students: Mapping[str, Any], tokenizer_dir: Path, texts: Sequence[str], conv: Any
) -> dict[str, Any]:
    """Time the teacher and every student as each would serve, side by side; choose (convert/served.py).

    Returns {"choice": ServedChoice as a dict, "models": [ServedFigures as dicts], "teacher_fp32_p50_ms",
    "short_text_tokens"}.
    """
    from tuneloop.convert.reference import fp32_path
    from tuneloop.convert.runtime import load_tokenizer
    from tuneloop.convert.served import ServedFigures, choose_served
    from tuneloop.convert.timing import time_models, typical_text
    from tuneloop.convert.variants import serving_threads

    results = {TEACHER: teacher, **students}
    forms = {name: served_form(result) for name, result in results.items()}
    paths = {name: path for name, (_, path) in forms.items()}
    if forms[TEACHER][0] == "int8":  # else the teacher as served IS its fp32 graph: timed once
        paths["teacher-fp32"] = fp32_path(Path(teacher.out_dir))
    tokenizer = load_tokenizer(tokenizer_dir)
    short = typical_text(tokenizer, list(texts), conv.max_length)
    timings = time_models(
        paths, tokenizer, short, conv.max_length, serving_threads(conv.timing_threads), conv.timing_calls
    )
    timings.setdefault("teacher-fp32", timings[TEACHER])
    figures = [
        ServedFigures(
            name=name,
            form=forms[name][0],
            p50_ms={k: round(v, 3) for k, v in timings[name].items()},
            parity_passed=result.parity.passed,
            reasons=list(result.parity.reasons),
        )
        for name, result in results.items()
    ]
    choice = choose_served(figures, timings["teacher-fp32"])
    return {
        "choice": choice.to_dict(),
        "models": [f.to_dict() for f in figures],
        "teacher_fp32_p50_ms": {k: round(v, 3) for k, v in timings["teacher-fp32"].items()},
        "short_text_tokens": len(tokenizer(short)["input_ids"]),
    }


def weigh_students(
    settings: Settings,
    version: str,
    teacher: Any,
    students: dict[str, dict[str, Any]],
    serves: str | None,
    merged: Path,
    work: Path,
    calibration: Sequence[str] | None,
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    thresholds: Any,
    conv: Any,
) -> tuple[Any, dict[str, Any]]:
    """(the result to publish, the `served` section): the teacher's or the chosen student's.

    `teacher` is the teacher's ConversionResult (parity passed); `students` the passing ones by
    name; `serves` a pinned choice (restore), which skips the timing.
    """
    recipe = teacher.int8_choice.chosen if teacher.int8_choice is not None else None
    converted = convert_students(
        settings,
        version,
        students,
        work,
        calibration,
        eval_sets,
        thresholds,
        conv,
        [recipe] if recipe else None,
    )
    if serves is not None:  # pinned (restore): no timing, the recorded choice
        name = student_of(serves) or TEACHER
        result = converted.get(name, teacher)
        choice = {"chosen": name, "form": served_form(result)[0], "reasons": [f"pinned: {serves}"]}
        return result, {
            "serves": serves,
            "pinned": True,
            "choice": choice,
            "models": [],
            "teacher_fp32_p50_ms": {},
        }
    texts = list(eval_sets.get("eval", next(iter(eval_sets.values())))[0])
    served = choose_what_serves(teacher, converted, merged, texts, conv)
    chosen = served["choice"]["chosen"]
    entry = students.get(chosen, {})
    served.update(
        serves=serves_tag(chosen),
        layers=entry.get("layers"),
        students={
            name: {"parity_passed": r.parity.passed, "reasons": list(r.parity.reasons), **students[name]}
            for name, r in converted.items()
        },
    )
    return (teacher if chosen == TEACHER else converted[chosen]), served
