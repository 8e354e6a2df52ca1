"""`tuneloop convert` on a registered version: artifacts and checksums on the version, a verdict
known in advance in each direction, re-judging when thresholds change, immutable published files,
tags that describe one conversion, and a refused tampered merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.registry.store import Registry, RegistryError
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.release import promotion_problems
from tuneloop.steps.round import train_step
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences

# Thresholds no conversion can miss (any fp32 diff under 1 logit, any INT8 drop), and thresholds no
# conversion can meet (fp32 ONNX equal to PyTorch to 1e-12: the exported graph sums in another
# order, so its logits differ from eager PyTorch by ~1e-7 at least).
LENIENT = {
    "max_abs_logit_diff_fp32": 1.0,
    "int8_max_macro_f1_drop_points": 100,
    "int8_min_argmax_agreement": 0,
}
STRICT = {
    "max_abs_logit_diff_fp32": 1e-12,
    "int8_max_macro_f1_drop_points": 0,
    "int8_min_argmax_agreement": 1,
}


def _policy(folder: Path, name: str, conversion: dict[str, float]) -> Path:
    policy = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    policy["conversion"] = conversion
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tuneloop.testing import make_tiny_bert

    root = tmp_path_factory.mktemp("convert-step")
    keyword_sentences(["alpha", "beta", "gamma"], 40, seed=0).to_csv(root / "data.csv", index=False)
    settings = load_settings(
        home=root / "home",
        base_model=str(make_tiny_bert(root / "tiny", hidden_size=128)),
        epochs=6,
        **TINY_TRAIN_SETTINGS,
        policy_path=_policy(root, "lenient", LENIENT),
    )
    ingest_step(settings, [root / "data.csv"])
    version = train_step(settings, progress=False)["version"]
    return settings, version, root


@pytest.fixture(scope="module")
def converted(trained):
    from tuneloop.steps.convert import convert_step

    settings, version, _ = trained
    return settings, version, convert_step(settings, version)


def _files(settings, run_id: str, path: str, dst: Path) -> dict[str, bytes]:
    local = Path(MlflowClient(settings.resolved_tracking_uri).download_artifacts(run_id, path, str(dst)))
    return {p.name: p.read_bytes() for p in local.iterdir() if p.is_file()}


def test_a_conversion_that_must_pass_is_recorded_as_passed(converted):
    settings, version, result = converted
    assert result["parity"]["passed"] is True and result["parity"]["reasons"] == []
    assert {"model.onnx", "model.int8.onnx", "calibration.json"} <= set(result["artifacts"])
    # The fastest candidate that passed parity on this host: on the tiny BERT often `dynamic`.
    assert result["quantization"] in ("static", "dynamic")
    assert result["int8_choice"]["chosen"] in {c["name"] for c in result["int8_candidates"]}
    assert result["tensorrt"]["status"].startswith("skipped:")  # no GPU / TensorRT here
    info = Registry(settings).get_version(version)
    assert info.tags["conversion"] == "passed"
    assert info.tags["trt"] == result["tensorrt"]["status"]
    assert info.tags["onnx_sha256"] == result["artifacts"]["model.onnx"]["sha256"]
    assert info.tags["int8_sha256"] == result["artifacts"]["model.int8.onnx"]["sha256"]
    assert info.tags["int8_serve"] == result["int8_choice"]["serve"]  # what the service obeys
    model_version = MlflowClient(settings.resolved_tracking_uri).get_model_version(
        settings.model_name, version
    )
    assert "| set | rows |" in model_version.description  # the parity table in the MLflow UI
    path = info.tags["conversion_path"]
    assert path == f"conversions/{info.tags['conversion_key']}"
    listed = {a.path for a in MlflowClient(settings.resolved_tracking_uri).list_artifacts(info.run_id, path)}
    assert f"{path}/model.int8.onnx" in listed and f"{path}/conversion_summary.json" in listed


def test_second_conversion_reuses_the_recorded_result(converted):
    from tuneloop.steps.convert import convert_step

    settings, version, first = converted
    again = convert_step(settings, version)
    assert again["reused"] is True
    assert again["artifacts"] == first["artifacts"]


def test_registry_checksum_guards_what_a_service_loads(converted, tmp_path):
    from tuneloop.convert.runtime import ChecksumMismatch, OnnxClassifier

    settings, version, _ = converted
    info = Registry(settings).get_version(version)
    client = MlflowClient(settings.resolved_tracking_uri)
    folder = Path(client.download_artifacts(info.run_id, info.tags["conversion_path"], str(tmp_path)))
    # The tokenizer, config and labels are the version's model/merged/ files (stored once).
    support = Path(client.download_artifacts(info.run_id, "model/merged", str(tmp_path / "merged")))
    model = OnnxClassifier(
        folder / "model.int8.onnx", expected_sha256=info.tags["int8_sha256"], tokenizer_dir=support
    )
    assert model.predict_logits(["apple banana cherry grape"]).shape == (1, 3)
    with (folder / "model.int8.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ChecksumMismatch):
        OnnxClassifier(
            folder / "model.int8.onnx", expected_sha256=info.tags["int8_sha256"], tokenizer_dir=support
        )


def test_stricter_thresholds_rejudge_and_a_conversion_that_must_fail_is_failed(converted):
    from tuneloop.steps.convert import convert_step

    settings, version, _ = converted
    strict = settings.model_copy(update={"policy_path": _policy(settings.home_dir, "strict", STRICT)})
    result = convert_step(strict, version)
    assert result["reused"] is False and result["parity"]["passed"] is False
    assert any("fp32 max |logit diff|" in r for r in result["parity"]["reasons"])
    info = Registry(settings).get_version(version)
    assert info.tags["conversion"] == "failed"
    assert json.loads(info.tags["conversion_reasons"]) == result["parity"]["reasons"]
    assert convert_step(settings, version)["parity"]["passed"] is True  # lenient again: re-judged
    assert Registry(settings).get_version(version).tags["conversion"] == "passed"


def test_reconversion_never_touches_published_files_and_leaves_no_stale_tags(converted, tmp_path):
    from tests.test_tensorrt import FakeRunner, make_fake_tensorrt

    from tuneloop.convert import tensorrt as trt_mod
    from tuneloop.steps.convert import convert_step

    settings, version, _ = converted
    registry = Registry(settings)
    with pytest.MonkeyPatch.context() as patch:  # a GPU host: the engine is built and published
        patch.setitem(__import__("sys").modules, "tensorrt", make_fake_tensorrt([]))
        patch.setattr(trt_mod, "GPU_PROBES", (("fake driver", lambda: "NVIDIA H100"),))
        patch.setattr(trt_mod, "TrtClassifier", FakeRunner)
        first = convert_step(settings, version)
    tags = registry.get_version(version).tags
    assert first["tensorrt"]["status"].startswith("built") and tags["trt_sha256"]
    run_id, first_path = registry.get_version(version).run_id, tags["conversion_path"]
    before = _files(settings, run_id, first_path, tmp_path / "before")
    assert any(name.endswith(".plan") for name in before)

    second = convert_step(settings, version, tensorrt="off")  # other settings: a new conversion
    tags = registry.get_version(version).tags
    assert tags["conversion_path"] != first_path and tags["conversion"] == "passed"
    assert tags["trt"] == second["tensorrt"]["status"] == "skipped: tensorrt disabled in settings"
    assert "trt_sha256" not in tags and "int8_trt_sha256" not in tags
    assert _files(settings, run_id, first_path, tmp_path / "after") == before
    source = {a.path for a in MlflowClient(settings.resolved_tracking_uri).list_artifacts(run_id, "model")}
    assert not [p for p in source if "onnx" in p]  # nothing was written into the version's source


def test_tampered_merged_model_is_refused_before_converting(converted):
    from tuneloop.steps.convert import convert_step

    settings, version, _ = converted
    registry = Registry(settings)
    info = registry.get_version(version)
    root = registry.client.get_run(info.run_id).info.artifact_uri.removeprefix("file://")
    weights = Path(root) / "model" / "merged" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        with pytest.raises(RegistryError, match="model.safetensors") as refused:
            convert_step(settings, version, calibrate=False)  # a new key: not answered from the record
        assert info.tags["merged_sha256"] in str(refused.value)
    finally:
        weights.write_bytes(original)
    assert registry.get_version(version).tags == info.tags  # nothing recorded


def test_failed_conversion_is_never_promoted(converted):
    settings, version, _ = converted
    info = Registry(settings).get_version(version)
    failed = type(info)(
        **{**info.__dict__, "tags": {**info.tags, "conversion": "failed", "approval": "approved"}}
    )
    from tuneloop.registry.policy import load_policy

    problems = promotion_problems(failed, load_policy(settings.policy_path))
    assert any("conversion parity" in p for p in problems), json.dumps(problems)


def test_parity_markdown_shows_the_engine_verdict_and_the_int8_candidates():
    from tuneloop.steps.convert import parity_markdown

    figures = {"n": 40, "fp32_max_abs_logit_diff": 1e-6, "torch_macro_f1": 0.9}
    figures |= {"int8_macro_f1": 0.9, "int8_macro_f1_drop_points": 0.0, "int8_argmax_agreement": 1.0}
    engine = {"n": 40, "macro_f1": 0.7, "macro_f1_drop_points": 20.0, "argmax_agreement": 0.8}
    summary = {
        "parity": {"passed": True, "reasons": [], "sets": {"eval": figures}},
        "quantization": "static",
        "tensorrt": {
            "status": "failed: parity: eval: engine argmax agreement 0.8000 < 0.9950",
            "parity": {"eval": {**engine, "max_abs_logit_diff": 1.5}},
        },
        "int8_candidates": [
            {
                "name": "static",
                "parity_passed": True,
                "agreement": {"eval": 0.997},
                "p50_ms": {"short_t1": 3.1},
            },
            {"name": "static_lean", "parity_passed": False, "agreement": {"eval": 0.95}, "p50_ms": {}},
        ],
        "int8_choice": {
            "chosen": "static",
            "serve": "int8",
            "ratio_to_fp32": 0.62,
            "reasons": ["static: fastest"],
        },
    }
    text = parity_markdown(summary)
    assert "TensorRT: failed: parity: eval: engine argmax agreement 0.8000 < 0.9950" in text
    assert "| eval | 40 | 0.7000 | 20.00 | 0.8000 | 1.500 |" in text
    assert "| static | passed | 0.9970 | 3.10 (short_t1) | 0.0 | yes |" in text
    assert "| static_lean | FAILED | 0.9500 | - | 0.0 |  |" in text
    assert "Serves **int8** (static, 0.62x fp32 latency)" in text


def test_a_version_stores_no_file_twice_and_not_the_plain_graph(converted, tmp_path):
    """conversions/ holds what only the conversion made: no copy of a model/ file (the tokenizer
    and config are read from model/merged/) and not the plain fp32 graph the fused one replaced
    (its sha256 and size stay in the summary and the onnx_sha256 tag)."""
    import hashlib

    settings, version, result = converted
    info = Registry(settings).get_version(version)
    client = MlflowClient(settings.resolved_tracking_uri)
    local = Path(client.download_artifacts(info.run_id, "", str(tmp_path)))
    digests: dict[str, list[str]] = {}
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = str(path.relative_to(local))
        if rel.startswith(("model/", "conversions/")):
            digests.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(rel)
    twice = {d: where for d, where in digests.items() if len({w.split("/")[0] for w in where}) > 1}
    assert not twice, f"stored in both model/ and conversions/: {twice}"
    published = {p.name for p in (local / info.tags["conversion_path"]).iterdir()}
    assert "model.opt.onnx" in published and "model.onnx" not in published
    assert info.tags["onnx_sha256"] == result["artifacts"]["model.onnx"]["sha256"]
