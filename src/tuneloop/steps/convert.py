"""Step: turn a registered version into serving artifacts, gated by parity, recorded on the version.

    merged model (from the version, sha256-verified) ─> ONNX fp32 ─> fused fp32 ─> INT8 (Q/DQ,
    calibrated on a seeded sample of the version's training snapshot) ─> TensorRT plan (where a GPU
    and TensorRT exist) └─> parity on the eval split and the golden set (policy `conversion`)

Each conversion is logged into the version's run under a NEW folder, `conversions/<key>/`, outside
the version's source (`model/`): what a version serves from never changes once published, and a
re-conversion with other settings writes beside the old one. The version's tags then describe that
one conversion: `conversion_path`, the checksums (`onnx_sha256`, `onnx_opt_sha256`, `int8_sha256`,
`trt_sha256`), `trt` (built / skipped: why / failed: why), and `conversion=passed|failed` set last;
any tag of an earlier conversion the new one does not set is deleted. A failed parity is recorded
with its figures and the version is never served.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.data import snapshot as snap
from tuneloop.registry.policy import load_policy
from tuneloop.registry.retention import GC_TAG
from tuneloop.registry.runs import free_path
from tuneloop.registry.store import Registry, RegistryError, now_iso
from tuneloop.steps.convert_report import parity_markdown
from tuneloop.steps.scratch import Scratch

CONVERSIONS = "conversions"  # runs:/<run>/conversions/<key>/, beside the version's source model/
SUMMARY = "conversion_summary.json"
# Files the converter writes but does not publish (their sha256 and size stay in the summary). The
# tokenizer and config are copies of the version's model/merged/ files, which every reader takes
# them from (steps/serve.py, the MLflow Model): storing them again in conversions/ is a second copy.
# The plain fp32 graph is the step before the fused one, which is what serves fp32 and what INT8
# is quantized from: 87 MB a MiniLM version that nothing reads once the fused graph exists.
NOT_PUBLISHED = frozenset(
    {"config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
)


def published_files(artifacts: Any) -> list[str]:
    """The converter's output files a version stores: everything but the copies of model/merged/
    and, where the fused graph exists, the plain one it was fused from."""
    names = [n for n in artifacts if n not in NOT_PUBLISHED]
    if "model.opt.onnx" in names:
        names = [n for n in names if n != "model.onnx"]
    return names


TAG_FOR = {
    "model.onnx": "onnx_sha256",
    "model.opt.onnx": "onnx_opt_sha256",
    "model.int8.onnx": "int8_sha256",
    "model.int8.trt.onnx": "int8_trt_sha256",
}
# Every tag a conversion writes. One the newest conversion does not set is deleted, so the tags
# never mix two conversions (a `trt_sha256` of a run that built an engine beside a later skip).
CONVERSION_TAGS = (
    *TAG_FOR.values(),
    "trt",
    "trt_sha256",
    "int8_serve",
    "conversion_key",
    "conversion_path",
    "conversion_at",
    "conversion_reasons",
    "serves",
    "conversion",
)
# MLflow keeps tag values up to 5,000 characters in 2.x; stay well inside that.
TAG_CHARS = 4000


def conversion_settings(
    settings: Settings, tensorrt: str = "auto", int8_candidates: tuple[str, ...] | None = None
) -> Any:
    from tuneloop.convert.settings import ConversionSettings

    conv = ConversionSettings(
        max_length=max(settings.max_length, 128),
        tensorrt=tensorrt,
        calibration_seed=settings.seed,
        preset=settings.int8_preset,
    )
    return replace(conv, int8_candidates=int8_candidates) if int8_candidates else conv


def conversion_key(inputs: dict[str, Any]) -> str:
    """20 hex digits (80 bits) of sha256 over everything that decides the files and the verdict."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]


def key_inputs(
    model_sha256: str,
    data: dict[str, Any],
    conv: Any,
    calibrate: bool,
    thresholds: dict[str, Any],
    converter_version: int,
    tensorrt: str,
    students: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What a conversion's key covers: model and data content, settings, policy, converter, host.

    `tensorrt` is "off", or what `tensorrt_status` says (TensorRT version and GPU, or why not), so
    a host that gains or changes a GPU converts again rather than reusing a skip.
    """
    return {
        "model_sha256": model_sha256,
        "data": data,
        "settings": {**asdict(conv), "calibrate": calibrate},
        "thresholds": thresholds,
        "converter": converter_version,
        "tensorrt": tensorrt,
        # The passing students weighed against the teacher ({"3L": sha256 of its checksums.json},
        # or a pinned choice): a student recorded after a conversion makes the next one new.
        **({"students": students} if students else {}),
    }


def convert_step(
    settings: Settings,
    version: str,
    calibrate: bool = True,
    tensorrt: str = "auto",
    int8_candidates: tuple[str, ...] | None = None,
    serves: str | None = None,
) -> dict[str, Any]:
    """Convert `version`; reuse the recorded result when its key (see `key_inputs`) is unchanged.

    `int8_candidates` narrows the INT8 candidates built and timed (default: every one the converter
    knows); a restore (restore.py) names the one the version published, so the rebuild is that one.

    Students: every student the version records as passed (steps/compress.py) is converted the same
    way and timed beside the teacher (steps/convert_students.py); the fastest that passed parity is
    what the conversion publishes, and the `serves` tag says which ("teacher" or "student-3L").
    `serves` pins that choice instead of timing (a restore rebuilds what was published).

    Serialised per version through the registry lock, so two workers never interleave the tags.
    The work folder `<work_dir>/convert/v<N>/` goes once the tags are written (or the recorded
    result reused), stays when the conversion fails, and older ones are pruned after (scratch.py).
    """
    registry = Registry(settings)
    info = registry.get_version(version)
    scratch = Scratch.of(settings, registry, "convert", "convert-")
    name = f"v{info.version}"  # the folder; its lock is convert-v<N>
    with registry.lock(f"convert-{name}"):
        try:
            summary = _convert(registry, settings, info.version, calibrate, tensorrt, int8_candidates, serves)
        except Exception as exc:
            scratch.keep(name, exc)
            raise
        scratch.remove_held(name)
    scratch.prune()
    return summary


def _convert(
    registry: Registry,
    settings: Settings,
    version: str,
    calibrate: bool,
    tensorrt: str,
    int8_candidates: tuple[str, ...] | None = None,
    serves: str | None = None,
) -> dict[str, Any]:
    from tuneloop.convert.pipeline import CONVERTER_VERSION, convert_model
    from tuneloop.convert.quantize import texts_sha256
    from tuneloop.convert.tensorrt import tensorrt_status
    from tuneloop.steps.convert_students import passing_students, student_of, weigh_students

    info = registry.get_version(version)  # read again under the lock
    snapshot_id = info.tags.get("data_snapshot")
    model_sha = info.tags.get("merged_sha256")
    if not snapshot_id or not model_sha:
        raise RegistryError(
            f"v{info.version} lacks the data_snapshot or merged_sha256 tag: it was not registered by "
            "tuneloop train, so what it holds cannot be converted reproducibly"
        )
    folder = settings.snapshots_dir
    manifest = snap.load_manifest(folder, snapshot_id)
    eval_split = snap.load_split(folder, snapshot_id, "eval")
    golden = snap.load_golden(folder, upto=snapshot_id)
    eval_sets = {
        name: (frame["text"].tolist(), frame["label"].tolist())
        for name, frame in (("eval", eval_split), ("golden", golden))
        if not frame.empty
    }
    policy = load_policy(settings.policy_path)
    conv = conversion_settings(settings, tensorrt, int8_candidates)
    data = {
        "snapshot": snapshot_id,
        "content_hash": manifest.content_hash,
        "golden_sha256": texts_sha256([json.dumps(eval_sets.get("golden", ([], [])), default=str)]),
    }
    trt = "off" if tensorrt == "off" else tensorrt_status()[1]
    students = passing_students(info.tags)
    if serves is not None:  # pinned: that model alone
        pinned = student_of(serves)
        if pinned is not None and pinned not in students:
            raise RegistryError(f"v{info.version} records no passing {pinned} student to serve")
        students = {pinned: students[pinned]} if pinned else {}
    weighed = {name: entry["sha256"] for name, entry in students.items()}
    if serves is not None:
        weighed["pinned"] = serves
    key = conversion_key(
        key_inputs(
            model_sha, data, conv, calibrate, policy.conversion.model_dump(), CONVERTER_VERSION, trt, weighed
        )
    )
    recorded_path = info.tags.get("conversion_path")
    verdict = info.tags.get("conversion") in ("passed", "failed")
    # A version gc collected has lost its graphs: its recorded conversion is redone (restore.py).
    collected = GC_TAG in info.tags
    if verdict and info.tags.get("conversion_key") == key and recorded_path and info.run_id and not collected:
        return {**_read_summary(registry, info.run_id, recorded_path, info.tags), "reused": True}

    work = settings.work_dir / "convert" / f"v{info.version}"  # convert_step's Scratch owns it
    shutil.rmtree(work / "input", ignore_errors=True)  # never convert a stale or partial download
    # verify=True: every file against the version's checksums.json (itself against the version's
    # checksums_sha256 tag) and merged_sha256; a mismatch raises naming the file and both hashes,
    # before anything is converted or recorded.
    merged = registry.download(info.version, "merged", work / "input", verify=True)
    train = snap.load_split(folder, snapshot_id, "train")
    calibration = train["text"].tolist() if calibrate else None
    result = convert_model(merged, work / "out", calibration, eval_sets, policy.conversion, conv)
    served = None
    if students and result.parity.passed:  # a teacher that fails parity serves nothing, nor do students
        result, served = weigh_students(
            settings,
            info.version,
            result,
            students,
            serves,
            merged,
            work,
            calibration,
            eval_sets,
            policy.conversion,
            conv,
        )
    summary = _summary(info.version, result, snapshot_id)
    if served is not None:
        summary["served"] = served
    _record(registry, info, result, summary, key)
    shutil.rmtree(work / "input", ignore_errors=True)
    return summary


def _read_summary(registry: Registry, run_id: str, path: str, tags: dict[str, str]) -> dict[str, Any]:
    """The recorded summary of the conversion the tags describe, checked against their checksums."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tuneloop-summary-") as tmp:
        local = registry.client.download_artifacts(run_id, f"{path}/{SUMMARY}", tmp)
        summary: dict[str, Any] = json.loads(Path(local).read_text())
    for name, tag in TAG_FOR.items():
        recorded = summary["artifacts"].get(name, {}).get("sha256")
        if recorded != tags.get(tag):
            raise RegistryError(
                f"{path}/{SUMMARY} says {name} has sha256 {recorded}, the version's {tag} tag says "
                f"{tags.get(tag)}: the record is inconsistent; run `tuneloop convert` with other "
                "settings or repair the tags"
            )
    return summary


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
        "tensorrt": {**asdict(result.tensorrt), "status": result.tensorrt.status},
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        # INT8 candidates and the choice among them, where the converter measures several
        # (convert/choice.py: CandidateFigures and Int8Choice as dicts); absent otherwise.
        **{
            k: _plain(getattr(result, k))
            for k in ("int8_candidates", "int8_choice")
            if getattr(result, k, None)
        },
        "reused": False,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.to_dict() if hasattr(value, "to_dict") else value


def _record(registry: Registry, info: Any, result: Any, summary: dict[str, Any], key: str) -> None:
    """Log the files to a new `conversions/<key>/`, then the tags; `conversion` goes last."""
    if info.run_id is None:
        raise RegistryError(f"v{info.version} has no run to attach its conversion to")
    run_id, version, client = info.run_id, info.version, registry.client
    out = Path(result.out_dir)
    staging = out.parent / "publish"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in published_files(result.artifacts):
        shutil.copy2(out / name, staging / name)
    (staging / SUMMARY).write_text(json.dumps(summary, indent=2))
    (staging / "parity.md").write_text(parity_markdown(summary))
    path = free_path(registry, run_id, f"{CONVERSIONS}/{key}")
    client.log_artifacts(run_id, str(staging), path)
    shutil.rmtree(staging, ignore_errors=True)
    for set_name, figures in summary["parity"]["sets"].items():
        for metric in ("fp32_max_abs_logit_diff", "int8_macro_f1_drop_points", "int8_argmax_agreement"):
            if figures.get(metric) is not None:
                client.log_metric(run_id, f"parity.{set_name}.{metric}", float(figures[metric]))
    tags = {TAG_FOR[name]: art["sha256"] for name, art in summary["artifacts"].items() if name in TAG_FOR}
    engine = summary["tensorrt"]
    tags["trt"] = engine["status"][:TAG_CHARS]
    if engine.get("path") and engine.get("sha256"):  # only a published plan, one in parity
        tags["trt_sha256"] = engine["sha256"]
    choice = summary.get("int8_choice") or {}
    if "model.int8.onnx" in summary["artifacts"]:
        # The converter publishes the fastest INT8 that passed parity, but serves it only when it
        # also beat fp32 on this host at the serving shape; readers (service, pyfunc) obey this tag.
        tags["int8_serve"] = "fp32" if choice.get("serve") == "fp32" else "int8"
    if summary.get("served"):
        tags["serves"] = summary["served"]["serves"]
    tags.update(
        {
            "conversion_key": key,
            "conversion_path": path,
            "conversion_at": now_iso(),
            "conversion_reasons": json.dumps(summary["parity"]["reasons"])[:TAG_CHARS],
        }
    )
    # Withdraw the verdict first: while the tags change, the version claims no conversion at all.
    _delete_tags(registry, version, ["conversion"] if "conversion" in info.tags else [])
    registry.set_tags(version, tags)
    stale = [t for t in CONVERSION_TAGS if t in info.tags and t not in tags and t != "conversion"]
    _delete_tags(registry, version, stale)
    client.update_model_version(registry.model_name, version, description=parity_markdown(summary))
    registry.set_tags(version, {"conversion": "passed" if summary["parity"]["passed"] else "failed"})


def _delete_tags(registry: Registry, version: str, names: list[str]) -> None:
    for name in names:
        registry.client.delete_model_version_tag(registry.model_name, str(version), name)
