"""`tuneloop convert` on a registered version: artifacts and checksums on the version, parity gate,
idempotent re-runs, and a service-side checksum check against the registry's tags."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.registry.store import Registry
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.release import promotion_problems
from tuneloop.steps.round import train_step
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from tuneloop.steps.convert import convert_step
    from tuneloop.testing import make_tiny_bert

    root = tmp_path_factory.mktemp("convert-step")
    keyword_sentences(["alpha", "beta", "gamma"], 40, seed=0).to_csv(root / "data.csv", index=False)
    settings = load_settings(
        home=root / "home",
        base_model=str(make_tiny_bert(root / "tiny", hidden_size=128)),
        epochs=6,
        **TINY_TRAIN_SETTINGS,
        policy_path=PROJECT_ROOT / "registry" / "policy.yaml",
    )
    ingest_step(settings, [root / "data.csv"])
    version = train_step(settings, progress=False)["version"]
    return settings, version, convert_step(settings, version)


def test_conversion_is_recorded_on_the_version(converted):
    settings, version, result = converted
    assert {"model.onnx", "model.int8.onnx", "calibration.json"} <= set(result["artifacts"])
    assert result["quantization"] == "static"
    assert result["tensorrt"]["skipped"].startswith("skipped:")  # no GPU / TensorRT here
    info = Registry(settings).get_version(version)
    assert info.tags["conversion"] == ("passed" if result["parity"]["passed"] else "failed")
    assert info.tags["onnx_sha256"] == result["artifacts"]["model.onnx"]["sha256"]
    assert info.tags["int8_sha256"] == result["artifacts"]["model.int8.onnx"]["sha256"]
    for figures in result["parity"]["sets"].values():
        assert figures["fp32_max_abs_logit_diff"] < 1e-3
    model_version = MlflowClient(settings.resolved_tracking_uri).get_model_version(
        settings.model_name, version
    )
    assert "| set | rows |" in model_version.description  # the parity table in the MLflow UI
    onnx_files = {
        a.path for a in MlflowClient(settings.resolved_tracking_uri).list_artifacts(info.run_id, "model/onnx")
    }
    assert "model/onnx/model.int8.onnx" in onnx_files and "model/onnx/conversion_summary.json" in onnx_files


def test_second_conversion_reuses_the_recorded_result(converted):
    from tuneloop.steps.convert import convert_step

    settings, version, first = converted
    again = convert_step(settings, version)
    assert again["reused"] is True
    assert again["artifacts"] == first["artifacts"]


def test_registry_checksum_guards_what_a_service_loads(converted, tmp_path):
    from tuneloop.convert.runtime import ChecksumMismatch, OnnxClassifier

    settings, version, _ = converted
    registry = Registry(settings)
    info = registry.get_version(version)
    folder = registry.download(version, "onnx", tmp_path / "dl")
    model = OnnxClassifier(folder / "model.int8.onnx", expected_sha256=info.tags["int8_sha256"])
    assert model.predict_logits(["apple banana cherry grape"]).shape == (1, 3)
    with (folder / "model.int8.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ChecksumMismatch):
        OnnxClassifier(folder / "model.int8.onnx", expected_sha256=info.tags["int8_sha256"])


def test_failed_conversion_is_never_promoted(converted):
    settings, version, _ = converted
    info = Registry(settings).get_version(version)
    failed = type(info)(
        **{**info.__dict__, "tags": {**info.tags, "conversion": "failed", "approval": "approved"}}
    )
    from tuneloop.registry.policy import load_policy

    problems = promotion_problems(failed, load_policy(settings.policy_path))
    assert any("conversion parity" in p for p in problems), json.dumps(problems)
