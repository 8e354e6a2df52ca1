"""The conversion's record, `conversion.json`: what was converted, with which settings and libraries,
every artifact with its sha256, and the parity verdict; and whether a recorded conversion is still
current (same key, every artifact still hashing as recorded), so a re-run rewrites nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.convert.choice import CandidateFigures, Int8Choice
from tuneloop.convert.files import sha256_file
from tuneloop.convert.parity import ParityReport, coerce_thresholds
from tuneloop.convert.quantize import texts_sha256
from tuneloop.convert.tensorrt import EngineResult

MANIFEST = "conversion.json"


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


def artifact(path: Path) -> Artifact:
    return Artifact(path.name, str(path), path.stat().st_size, sha256_file(path))


def eval_sets_key(
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]], thresholds: Any
) -> dict[str, Any]:
    sets = {
        name: texts_sha256([json.dumps([list(t), [str(x) for x in lab]])])
        for name, (t, lab) in eval_sets.items()
    }
    return {"eval_sets": sets, "thresholds": asdict(coerce_thresholds(thresholds))}


def load_if_current(out: Path, key: dict[str, Any]) -> dict[str, Any] | None:
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


def engine_artifacts(out: Path, engine: EngineResult) -> dict[str, Any]:
    """The published plan and its sidecar (none unless the engine was built and kept parity)."""
    if not engine.path:
        return {}
    plan = Path(engine.path)
    return {p.name: asdict(artifact(out / p.name)) for p in (plan, plan.with_name(plan.name + ".json"))}


def result_from(manifest: dict[str, Any], reused: bool) -> ConversionResult:
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


def quantization_kind(chosen: str | None) -> str:
    """The INT8 kind published: static, dynamic, or none (no candidate passed: fp32 serves)."""
    if chosen is None:
        return "none"
    return "dynamic" if chosen == "dynamic" else "static"
