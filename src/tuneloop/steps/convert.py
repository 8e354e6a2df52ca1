"""Step: turn a registered version into serving artifacts, gated by parity, recorded on the version.

    merged model (from the version) ─> ONNX fp32 ─> fused fp32 ─> INT8 (Q/DQ, calibrated on a seeded
    sample of the version's training snapshot) ─> TensorRT plan (where a GPU and TensorRT exist)
    └─> parity on the eval split and the golden set against PyTorch (thresholds: policy `conversion`)

The artifacts are logged into the version's own run under `model/onnx/`, so one registry version
holds the adapter, the merged model and every converted file, each with its sha256 in the tags
(`onnx_sha256`, `onnx_opt_sha256`, `int8_sha256`, `trt_sha256`) for the service to verify. A
failed parity is recorded (`conversion=failed`, with the figures) and the version is never served.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.data import snapshot as snap
from tuneloop.registry.policy import load_policy
from tuneloop.registry.store import Registry, RegistryError, now_iso

ONNX_ARTIFACT = "onnx"  # under the version's model folder: runs:/<run>/model/onnx
TAG_FOR = {
    "model.onnx": "onnx_sha256",
    "model.opt.onnx": "onnx_opt_sha256",
    "model.int8.onnx": "int8_sha256",
}


def conversion_settings(settings: Settings, tensorrt: str = "auto") -> Any:
    from tuneloop.convert.pipeline import ConversionSettings

    return ConversionSettings(
        max_length=max(settings.max_length, 128),
        tensorrt=tensorrt,
        calibration_seed=settings.seed,
        preset=settings.int8_preset,
    )


def convert_step(
    settings: Settings, version: str, calibrate: bool = True, tensorrt: str = "auto"
) -> dict[str, Any]:
    """Convert `version`; reuse the recorded result when it was converted with the same settings."""
    from tuneloop.convert.pipeline import convert_model

    registry = Registry(settings)
    info = registry.get_version(version)
    conv = conversion_settings(settings, tensorrt)
    settings_key = json.dumps({**asdict(conv), "calibrate": calibrate}, sort_keys=True, default=str)
    if info.tags.get("conversion") in ("passed", "failed") and info.tags.get("conversion_key") == _short(
        settings_key
    ):
        recorded = registry.download(info.version, f"{ONNX_ARTIFACT}/conversion_summary.json")
        return {**json.loads(Path(recorded).read_text()), "reused": True}

    snapshot_id = info.tags.get("data_snapshot")
    if not snapshot_id:
        raise RegistryError(
            f"v{info.version} has no data_snapshot tag: it was not registered by tuneloop train"
        )
    work = settings.work_dir / "convert" / f"v{info.version}"
    merged = registry.download(info.version, "merged", work / "input")
    folder = settings.snapshots_dir
    train = snap.load_split(folder, snapshot_id, "train")
    eval_split = snap.load_split(folder, snapshot_id, "eval")
    golden = snap.load_golden(folder, upto=snapshot_id)
    eval_sets = {
        name: (frame["text"].tolist(), frame["label"].tolist())
        for name, frame in (("eval", eval_split), ("golden", golden))
        if not frame.empty
    }
    calibration = train["text"].tolist() if calibrate else None
    policy = load_policy(settings.policy_path)
    result = convert_model(merged, work / "out", calibration, eval_sets, policy.conversion, conv)

    summary = _summary(info.version, result, snapshot_id)
    _record(registry, info.version, info.run_id, result, summary, _short(settings_key))
    shutil.rmtree(work / "input", ignore_errors=True)
    return summary


def _short(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _summary(version: str, result: Any, snapshot_id: str) -> dict[str, Any]:
    parity = result.parity.to_dict()
    return {
        "version": version,
        "data_snapshot": snapshot_id,
        "artifacts": {
            name: {"bytes": art.bytes, "sha256": art.sha256}
            for name, art in result.artifacts.items()
            if name.endswith((".onnx", ".plan", ".json"))
        },
        "parity": {
            "passed": parity["passed"],
            "reasons": parity["reasons"],
            "sets": parity["sets"],
            "thresholds": parity["thresholds"],
        },
        "quantization": result.quantization,
        "fusions": result.fusions,
        "tensorrt": asdict(result.tensorrt),
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "reused": False,
    }


def parity_markdown(summary: dict[str, Any]) -> str:
    """The parity table shown on the model version page of the MLflow UI."""
    lines = [
        f"**Conversion {'passed' if summary['parity']['passed'] else 'FAILED'}** "
        f"({summary['quantization']} INT8; TensorRT: {summary['tensorrt'].get('skipped') or 'built'})",
        "",
        "| set | rows | fp32 max abs dlogit | torch macro-F1 | INT8 macro-F1 | drop (pts) | agreement |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary["parity"]["sets"].items():
        lines.append(
            f"| {name} | {s['n']} | {s['fp32_max_abs_logit_diff']:.2e} | {s['torch_macro_f1']:.4f} | "
            f"{_fmt(s['int8_macro_f1'])} | {_fmt(s['int8_macro_f1_drop_points'], 2)} | "
            f"{_fmt(s['int8_argmax_agreement'])} |"
        )
    lines += [""] + [f"- {reason}" for reason in summary["parity"]["reasons"]]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _record(
    registry: Registry, version: str, run_id: str | None, result: Any, summary: dict[str, Any], key: str
) -> None:
    """Log artifacts into the version's run (model/onnx), then tags: the tag `conversion` goes last."""
    if run_id is None:
        raise RegistryError(f"v{version} has no run to attach its conversion to")
    out = Path(result.out_dir)
    staging = out.parent / "publish"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in result.artifacts:
        shutil.copy2(out / name, staging / name)
    (staging / "conversion_summary.json").write_text(json.dumps(summary, indent=2))
    (staging / "parity.md").write_text(parity_markdown(summary))
    client = registry.client
    client.log_artifacts(run_id, str(staging), f"model/{ONNX_ARTIFACT}")
    for set_name, figures in summary["parity"]["sets"].items():
        for metric in ("fp32_max_abs_logit_diff", "int8_macro_f1_drop_points", "int8_argmax_agreement"):
            if figures.get(metric) is not None:
                client.log_metric(run_id, f"parity.{set_name}.{metric}", float(figures[metric]))
    tags = {TAG_FOR[name]: art["sha256"] for name, art in summary["artifacts"].items() if name in TAG_FOR}
    engine = summary["tensorrt"]
    tags["trt"] = engine["skipped"] or f"built ({Path(engine['path']).name})"
    if engine.get("sha256"):
        tags["trt_sha256"] = engine["sha256"]
    tags.update(
        {
            "conversion_key": key,
            "conversion_at": now_iso(),
            "conversion_reasons": json.dumps(summary["parity"]["reasons"])[:4000],
        }
    )
    registry.set_tags(version, tags)
    client.update_model_version(registry.model_name, version, description=parity_markdown(summary))
    registry.set_tags(version, {"conversion": "passed" if summary["parity"]["passed"] else "failed"})
    shutil.rmtree(staging, ignore_errors=True)
