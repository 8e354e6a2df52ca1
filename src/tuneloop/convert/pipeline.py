"""convert_model: merged transformers folder -> ONNX fp32, fused fp32, INT8, TensorRT plan, parity.

Layout of `out_dir` (everything a server needs, nothing it should not trust):

    model.onnx            fp32 export (dynamic batch and sequence)
    model.opt.onnx        fused fp32 (served fp32)            when settings.optimize
    model.int8.onnx       INT8: the fastest candidate in parity (variants.py; absent when none passed)
    candidates/           the other INT8 candidates, only with settings.keep_candidates (benchmarks)
    model.int8.trt.onnx   symmetric Q/DQ for TensorRT        only when TensorRT is available
    model.*.plan(.json)   TensorRT engine and its cache key  only when built and in parity
    engines/              TensorRT plan cache (tensorrt.py), kept across conversions, not an artifact
    calibration.json      which texts calibrated the INT8 model: seed, count, a sha256 per text
    config.json, tokenizer files   copied from the input, so the folder loads on its own
    conversion.json       written last: input and settings hashes, artifacts with sha256, parity

Idempotent: a call whose input hash, settings, calibration texts and library versions match
conversion.json (and whose artifacts still hash as recorded) rewrites nothing. Atomic: every file
is renamed into place complete, and conversion.json is removed before a new conversion starts
and written after it ends, so it never vouches for a mixture of two conversions. The record itself
is record.py's; the PyTorch reference parity is judged against is reference.py's.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneloop.convert.export import export_onnx
from tuneloop.convert.files import atomic_output, sweep_temporaries, write_text_atomic
from tuneloop.convert.optimize import optimize_onnx, read_bert_shape
from tuneloop.convert.quantize import quantize_int8_static, texts_sha256
from tuneloop.convert.record import (
    MANIFEST,
    ConversionResult,
    artifact,
    engine_artifacts,
    eval_sets_key,
    hash_model_dir,
    library_versions,
    load_if_current,
    quantization_kind,
    result_from,
)
from tuneloop.convert.reference import eval_logits, fp32_path, judge_parity, label_indices
from tuneloop.convert.settings import ConversionSettings
from tuneloop.convert.tensorrt import EngineResult, publish_engine, tensorrt_status
from tuneloop.convert.variants import convert_int8

# Part of the idempotency key: bump when a change here or in the steps changes what gets written,
# so outputs of an older converter are rebuilt rather than reused.
CONVERTER_VERSION = 5  # 5: INT8 chosen among timed candidates; calibration.json without texts
SUPPORT_FILES = (
    "config.json",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
ARTIFACT_FILES = (
    "model.onnx",
    "model.opt.onnx",
    "model.int8.onnx",
    "model.int8.trt.onnx",
    "calibration.json",
)


def convert_model(
    model_dir: Path,
    out_dir: Path,
    calibration_texts: Sequence[str] | None,
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    thresholds: Any = None,
    settings: ConversionSettings | None = None,
) -> ConversionResult:
    """Convert `model_dir` into `out_dir` and check parity on `eval_sets` ({name: (texts, labels)}).

    No calibration texts -> dynamic INT8. A failed parity still returns every figure with
    `passed=False`; the caller records it and must not serve it.
    """
    settings = settings or ConversionSettings()
    model_dir, out = Path(model_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    calibration = list(calibration_texts or [])
    key = {
        "model_sha256": hash_model_dir(model_dir),
        "settings": json.loads(json.dumps(asdict(settings))),
        "calibration_sha256": texts_sha256(calibration) if calibration else None,
        "versions": {"tuneloop.convert": CONVERTER_VERSION, **library_versions()},
        # TensorRT and GPU found (versions, GPU name) or why not: a host change redoes the engine.
        "tensorrt": "off" if settings.tensorrt == "off" else tensorrt_status()[1],
    }
    eval_key = eval_sets_key(eval_sets, thresholds)
    seconds["hash"] = time.perf_counter() - clock
    manifest = load_if_current(out, key)
    if manifest is not None:
        if manifest.get("eval_key") == eval_key:
            return result_from(manifest, reused=True)
        clock = time.perf_counter()  # same artifacts, new eval sets or thresholds: parity only
        manifest["parity"] = judge_parity(model_dir, out, eval_sets, thresholds, settings).to_dict()
        if not manifest["tensorrt"].get("skipped"):  # the engine is judged by the same thresholds
            engine = _tensorrt_step(
                out, model_dir, calibration, settings, common_args(settings), eval_sets, thresholds
            )
            kept = {n: a for n, a in manifest["artifacts"].items() if not n.endswith((".plan", ".plan.json"))}
            manifest["artifacts"] = {**kept, **engine_artifacts(out, engine)}
            manifest["tensorrt"] = asdict(engine)
        manifest["eval_key"], manifest["seconds"]["parity"] = eval_key, time.perf_counter() - clock
        write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
        return result_from(manifest, reused=True)

    (out / MANIFEST).unlink(missing_ok=True)
    sweep_temporaries(out)
    for name in ARTIFACT_FILES:
        (out / name).unlink(missing_ok=True)
    for plan in [*out.glob("*.plan"), *out.glob("*.plan.json")]:
        plan.unlink()
    for leftover in [*out.glob("candidate.*.onnx"), *out.glob("candidates/*.onnx")]:
        leftover.unlink()  # INT8 candidates of a killed or earlier conversion

    def timed(step: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds[step] = time.perf_counter() - start
        return value

    for name in SUPPORT_FILES:
        if (model_dir / name).is_file():
            with atomic_output(out / name) as tmp:
                shutil.copyfile(model_dir / name, tmp)
    timed("export", export_onnx, model_dir, out / "model.onnx", settings.opset)
    fusions: dict[str, int] = {}
    if settings.optimize:
        heads, hidden = read_bert_shape(model_dir)
        fusions = timed("optimize", optimize_onnx, out / "model.onnx", out / "model.opt.onnx", heads, hidden)
    source = out / (
        "model.opt.onnx" if settings.optimize and settings.quantize_from == "optimized" else "model.onnx"
    )
    common = common_args(settings)
    logits = timed("reference", eval_logits, model_dir, out, eval_sets, settings)
    int8 = timed(
        "int8",
        convert_int8,
        settings.int8_candidates,
        out,
        source,
        out / ("model.opt.onnx" if settings.optimize else "model.onnx"),  # dynamic: fused kernels
        fp32_path(out),
        model_dir,
        calibration,
        logits,
        thresholds,
        preset=settings.preset,
        threads=settings.timing_threads,
        calls=settings.timing_calls,
        common=common,
        keep=out / "candidates" if settings.keep_candidates else None,
    )
    if int8.calibration is not None:
        write_text_atomic(out / "calibration.json", int8.calibration.to_json())
    elif int8.choice.chosen == "dynamic":
        write_text_atomic(out / "calibration.json", json.dumps({"method": "dynamic", "count": 0}, indent=2))
    engine = timed(
        "tensorrt", _tensorrt_step, out, model_dir, calibration, settings, common, eval_sets, thresholds
    )
    parity = int8.report  # the published INT8's verdict (or fp32's alone), judged on these eval sets

    names = [*SUPPORT_FILES, *ARTIFACT_FILES]
    artifacts = {n: asdict(artifact(out / n)) for n in names if (out / n).is_file()}
    artifacts.update(engine_artifacts(out, engine))
    manifest = {
        "key": key,
        "eval_key": eval_key,
        "artifacts": artifacts,
        "parity": parity.to_dict(),
        "seconds": seconds,
        "fusions": fusions,
        "quantization": quantization_kind(int8.choice.chosen),
        "tensorrt": asdict(engine),
        "int8_candidates": [c.to_dict() for c in int8.candidates],
        "int8_choice": {**int8.choice.to_dict(), "fp32_p50_ms": int8.fp32_p50_ms},
        "out_dir": str(out),
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
    return result_from(manifest, reused=False)


def common_args(settings: ConversionSettings) -> dict[str, Any]:
    """The calibration arguments every static quantisation of one conversion shares."""
    return dict(
        count=settings.calibration_count,
        seed=settings.calibration_seed,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        method=settings.calibration_method,
    )


def _tensorrt_step(
    out: Path,
    model_dir: Path,
    calibration: list[str],
    settings: ConversionSettings,
    common: dict[str, Any],
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    thresholds: Any,
) -> EngineResult:
    if settings.tensorrt == "off":
        return EngineResult(skipped="skipped: tensorrt disabled in settings")
    available, reason = tensorrt_status()
    if not available:
        return EngineResult(skipped=f"skipped: {reason}")
    if not calibration:
        return EngineResult(
            skipped="skipped: TensorRT needs static Q/DQ, and no calibration texts were given"
        )
    qdq = out / "model.int8.onnx"
    if settings.preset != "tensorrt":
        qdq = out / "model.int8.trt.onnx"
        try:
            if not qdq.is_file():  # a fresh conversion removed it; a re-judge reuses it
                quantize_int8_static(
                    out / "model.onnx", qdq, model_dir, calibration, preset="tensorrt", **common
                )
        except Exception as error:  # loud in the summary and the trt tag; the CPU artifacts still publish
            return EngineResult(failed=f"TensorRT Q/DQ graph: {type(error).__name__}: {error}")
    label2id = json.loads((Path(model_dir) / "config.json").read_text()).get("label2id") or {}
    indexed = {name: (list(t), label_indices(y, label2id)) for name, (t, y) in eval_sets.items()}
    fp32 = out / ("model.opt.onnx" if (out / "model.opt.onnx").is_file() else "model.onnx")
    return publish_engine(
        qdq,
        out,
        fp32,
        indexed,
        thresholds,
        profile=settings.trt_profile,
        max_length=settings.max_length,
        batch_size=settings.batch_size,
        threads=settings.threads,
    )
