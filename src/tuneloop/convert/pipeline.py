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
and written after it ends, so it never vouches for a mixture of two conversions.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.choice import CandidateFigures, Int8Choice
from tuneloop.convert.export import DEFAULT_OPSET, export_onnx
from tuneloop.convert.files import atomic_output, sha256_file, sweep_temporaries, write_text_atomic
from tuneloop.convert.optimize import optimize_onnx, read_bert_shape
from tuneloop.convert.parity import ParityReport, check_parity, coerce_thresholds
from tuneloop.convert.quantize import quantize_int8_static, texts_sha256
from tuneloop.convert.runtime import DEFAULT_MAX_LENGTH, OnnxClassifier, encode
from tuneloop.convert.tensorrt import DEFAULT_PROFILE, EngineResult, publish_engine, tensorrt_status
from tuneloop.convert.variants import CANDIDATES, EvalLogits, convert_int8

MANIFEST = "conversion.json"
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


@dataclass(frozen=True)
class ConversionSettings:
    """Everything besides the inputs that changes the outputs (part of the idempotency key)."""

    opset: int = DEFAULT_OPSET
    optimize: bool = True  # write model.opt.onnx with ORT's BERT fusions and serve fp32 from it
    quantize_from: str = "plain"  # "plain" (model.onnx) or "optimized"; see quantize.py / README
    preset: str = "cpu"  # INT8 preset for model.int8.onnx: "cpu", "cpu7" or "tensorrt" (quantize.py)
    calibration_count: int = 1024  # 256 -> 1024 texts: MiniLM INT8 agreement 0.973 -> 0.979
    calibration_seed: int = 13
    calibration_method: str = "MinMax"
    max_length: int = DEFAULT_MAX_LENGTH
    batch_size: int = 16  # calibration and parity batches
    tensorrt: str = "auto"  # "auto": build a plan where TensorRT and a GPU exist; "off"
    trt_profile: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(DEFAULT_PROFILE))
    threads: int | None = None  # ORT intra-op threads and torch threads for parity (None: library default)
    # INT8 candidates built, judged and timed (variants.py); the fastest in parity is model.int8.onnx.
    int8_candidates: tuple[str, ...] = CANDIDATES
    timing_threads: tuple[int, ...] = (1, 2)  # serving thread counts timed (capped at this host's cores)
    # Timed calls per model, shape and thread count (2 blocks of 20, timing.py): 5 models x 2 shapes
    # x 2 thread counts x (40 + 6 warm-up) calls of 1-18 ms, about 15 s on the 2-core EPYC.
    timing_calls: int = 40
    keep_candidates: bool = False  # keep the unchosen candidates in candidates/ (benchmarks/convert.py)


@dataclass
class Artifact:
    name: str
    path: str
    bytes: int
    sha256: str


@dataclass
class ConversionResult:
    """What a conversion produced and whether it may be served (`parity.passed`)."""

    out_dir: str
    artifacts: dict[str, Artifact]
    parity: ParityReport
    seconds: dict[str, float]
    fusions: dict[str, int]
    quantization: str  # "static" or "dynamic"
    tensorrt: EngineResult
    reused: bool = False
    int8_candidates: list[CandidateFigures] = field(default_factory=list)
    int8_choice: Int8Choice | None = None

    @property
    def passed(self) -> bool:
        return self.parity.passed


def hash_model_dir(model_dir: Path) -> str:
    """One sha256 over the folder's top-level files (names and contents)."""
    entries = sorted(p for p in Path(model_dir).iterdir() if p.is_file() and not p.name.startswith("."))
    listing = "\n".join(f"{p.name}\t{sha256_file(p)}" for p in entries)
    return texts_sha256([listing])


def library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _artifact(path: Path) -> Artifact:
    return Artifact(path.name, str(path), path.stat().st_size, sha256_file(path))


def _label_indices(labels: Sequence[Any], label2id: Mapping[str, int]) -> np.ndarray:
    return np.asarray(
        [label if isinstance(label, int | np.integer) else label2id[str(label)] for label in labels]
    )


def load_torch_model(model_dir: Path, threads: int | None = None) -> Any:
    """The PyTorch reference model, as training saved it (default attention implementation)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if threads:
        torch.set_num_threads(threads)
    return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()


def torch_logits(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
) -> np.ndarray:
    """Reference logits from the PyTorch model, tokenised exactly as the ONNX runtime tokenises."""
    import torch

    outputs = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[i : i + batch_size], max_length)
            outputs.append(model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, model.config.num_labels), np.float32)


def _parity(
    model_dir: Path,
    out: Path,
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    thresholds: Any,
    settings: ConversionSettings,
) -> ParityReport:
    logits = _eval_logits(model_dir, out, eval_sets, settings)
    int8 = out / "model.int8.onnx"  # absent when no INT8 candidate passed: fp32 is judged alone
    i8 = logits.of(int8) if int8.is_file() else None
    return check_parity(logits.reference, logits.fp32, i8, logits.labels, thresholds)


def _fp32_path(out: Path) -> Path:
    return out / ("model.opt.onnx" if (out / "model.opt.onnx").is_file() else "model.onnx")


def _eval_logits(
    model_dir: Path,
    out: Path,
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    settings: ConversionSettings,
) -> EvalLogits:
    """PyTorch and fp32 ONNX logits on every eval set, once; `of(path)` runs any other ONNX file."""
    label2id = json.loads((Path(model_dir) / "config.json").read_text()).get("label2id") or {}
    fp32 = OnnxClassifier(_fp32_path(out), threads=settings.threads, max_length=settings.max_length)
    model, tokenizer = load_torch_model(model_dir, settings.threads), fp32.tokenizer
    sets = {name: list(texts) for name, (texts, _) in eval_sets.items()}

    def onnx_logits(path: Path) -> dict[str, np.ndarray]:
        session = OnnxClassifier(
            path, threads=settings.threads, max_length=settings.max_length, tokenizer_dir=out
        )
        return {name: session.predict_logits(texts, settings.batch_size) for name, texts in sets.items()}

    return EvalLogits(
        reference={
            name: torch_logits(model, tokenizer, texts, settings.max_length, settings.batch_size)
            for name, texts in sets.items()
        },
        fp32={name: fp32.predict_logits(texts, settings.batch_size) for name, texts in sets.items()},
        labels={name: _label_indices(labels, label2id) for name, (_, labels) in eval_sets.items()},
        of=onnx_logits,
        texts=[text for texts in sets.values() for text in texts],
        tokenizer=tokenizer,
    )


def _eval_key(
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]], thresholds: Any
) -> dict[str, Any]:
    sets = {
        name: texts_sha256([json.dumps([list(t), [str(x) for x in lab]])])
        for name, (t, lab) in eval_sets.items()
    }
    return {"eval_sets": sets, "thresholds": asdict(coerce_thresholds(thresholds))}


def _load_if_current(out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("key") != key:
        return None
    for art in manifest["artifacts"].values():
        path = out / art["name"]
        if not path.is_file() or path.stat().st_size != art["bytes"] or sha256_file(path) != art["sha256"]:
            return None
    return manifest


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
    eval_key = _eval_key(eval_sets, thresholds)
    seconds["hash"] = time.perf_counter() - clock
    manifest = _load_if_current(out, key)
    if manifest is not None:
        if manifest.get("eval_key") == eval_key:
            return _result(manifest, reused=True)
        clock = time.perf_counter()  # same artifacts, new eval sets or thresholds: parity only
        manifest["parity"] = _parity(model_dir, out, eval_sets, thresholds, settings).to_dict()
        if not manifest["tensorrt"].get("skipped"):  # the engine is judged by the same thresholds
            engine = _tensorrt_step(
                out, model_dir, calibration, settings, common_args(settings), eval_sets, thresholds
            )
            kept = {n: a for n, a in manifest["artifacts"].items() if not n.endswith((".plan", ".plan.json"))}
            manifest["artifacts"] = {**kept, **_engine_artifacts(out, engine)}
            manifest["tensorrt"] = asdict(engine)
        manifest["eval_key"], manifest["seconds"]["parity"] = eval_key, time.perf_counter() - clock
        write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
        return _result(manifest, reused=True)

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
    logits = timed("reference", _eval_logits, model_dir, out, eval_sets, settings)
    int8 = timed(
        "int8",
        convert_int8,
        settings.int8_candidates,
        out,
        source,
        out / ("model.opt.onnx" if settings.optimize else "model.onnx"),  # dynamic: fused kernels
        _fp32_path(out),
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
    artifacts = {n: asdict(_artifact(out / n)) for n in names if (out / n).is_file()}
    artifacts.update(_engine_artifacts(out, engine))
    manifest = {
        "key": key,
        "eval_key": eval_key,
        "artifacts": artifacts,
        "parity": parity.to_dict(),
        "seconds": seconds,
        "fusions": fusions,
        "quantization": _quantization(int8.choice.chosen),
        "tensorrt": asdict(engine),
        "int8_candidates": [c.to_dict() for c in int8.candidates],
        "int8_choice": {**int8.choice.to_dict(), "fp32_p50_ms": int8.fp32_p50_ms},
        "out_dir": str(out),
    }
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
    return _result(manifest, reused=False)


def common_args(settings: ConversionSettings) -> dict[str, Any]:
    """The calibration arguments every static quantisation of one conversion shares."""
    return dict(
        count=settings.calibration_count,
        seed=settings.calibration_seed,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        method=settings.calibration_method,
    )


def _engine_artifacts(out: Path, engine: EngineResult) -> dict[str, Any]:
    """The published plan and its sidecar (none unless the engine was built and kept parity)."""
    if not engine.path:
        return {}
    plan = Path(engine.path)
    return {p.name: asdict(_artifact(out / p.name)) for p in (plan, plan.with_name(plan.name + ".json"))}


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
    indexed = {name: (list(t), _label_indices(y, label2id)) for name, (t, y) in eval_sets.items()}
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


def _result(manifest: dict[str, Any], reused: bool) -> ConversionResult:
    return ConversionResult(
        out_dir=manifest["out_dir"],
        artifacts={name: Artifact(**art) for name, art in manifest["artifacts"].items()},
        parity=ParityReport.from_dict(manifest["parity"]),
        seconds=dict(manifest["seconds"]),
        fusions=dict(manifest["fusions"]),
        quantization=manifest["quantization"],
        tensorrt=EngineResult(**manifest["tensorrt"]),
        reused=reused,
        int8_candidates=[CandidateFigures(**c) for c in manifest.get("int8_candidates", [])],
        int8_choice=_choice(manifest.get("int8_choice")),
    )


def _choice(data: Mapping[str, Any] | None) -> Int8Choice | None:
    if not data:
        return None
    return Int8Choice(**{k: v for k, v in data.items() if k != "fp32_p50_ms"})


def _quantization(chosen: str | None) -> str:
    """The INT8 kind published: static, dynamic, or none (no candidate passed: fp32 serves)."""
    if chosen is None:
        return "none"
    return "dynamic" if chosen == "dynamic" else "static"
