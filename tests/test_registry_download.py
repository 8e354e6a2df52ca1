"""Registry.download verifies what it fetched against what was recorded at registration.

A version is registered the way `tuneloop train` does it (a `model/` folder with checksums.json and
the weight hashes as tags) in a real SQLite store with local artifacts; the stored files are then
tampered with where they lie, as a bad disk or a bad actor would.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from tuneloop.config import Settings, load_settings
from tuneloop.files import sha256_file
from tuneloop.registry.store import Registry, RegistryError, checksums


def _register(tmp_path: Path) -> tuple[Settings, Registry, str]:
    settings = load_settings(home=tmp_path / "home")
    registry = Registry(settings)
    model = tmp_path / "model"
    (model / "adapter").mkdir(parents=True)
    (model / "merged").mkdir()
    (model / "adapter" / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (model / "adapter" / "labels.json").write_text('["a", "b"]')
    (model / "merged" / "model.safetensors").write_bytes(b"merged weights")
    (model / "checksums.json").write_text(json.dumps(checksums(model)))
    with mlflow.start_run(experiment_id=registry.experiment_id("t")) as run:
        mlflow.log_artifacts(str(model), "model")
    tags = {
        "adapter_sha256": sha256_file(model / "adapter" / "adapter_model.safetensors"),
        "merged_sha256": sha256_file(model / "merged" / "model.safetensors"),
    }
    return settings, registry, registry.register(run.info.run_id, "model", tags).version


def _stored(settings: Settings, relative: str) -> Path:
    (found,) = [p for p in settings.home_dir.joinpath("mlartifacts").rglob(relative) if p.is_file()]
    return found


def test_untouched_artifacts_download_whole_or_in_part(tmp_path: Path) -> None:
    _, registry, version = _register(tmp_path)
    whole = registry.download(version)
    assert (whole / "adapter" / "adapter_model.safetensors").read_bytes() == b"adapter weights"
    adapter = registry.download(version, "adapter", tmp_path / "dl")
    assert adapter == tmp_path / "dl" / "adapter" and (adapter / "labels.json").is_file()
    single = registry.download(version, "merged/model.safetensors", tmp_path / "one")
    assert single.read_bytes() == b"merged weights"


def test_a_tampered_file_is_named_with_both_hashes_and_the_download_deleted(tmp_path: Path) -> None:
    settings, registry, version = _register(tmp_path)
    stored = _stored(settings, "adapter/labels.json")
    recorded = sha256_file(stored)
    stored.write_text('["b", "a"]')
    with pytest.raises(RegistryError) as caught:
        registry.download(version, "adapter", tmp_path / "dl")
    message = str(caught.value)
    assert "adapter/labels.json" in message and recorded in message and sha256_file(stored) in message
    assert not (tmp_path / "dl" / "adapter").exists()


def test_a_weight_file_and_manifest_tampered_together_are_caught_by_the_tag(tmp_path: Path) -> None:
    settings, registry, version = _register(tmp_path)
    weights = _stored(settings, "merged/model.safetensors")
    weights.write_bytes(b"other weights")
    manifest = _stored(settings, "model/checksums.json")
    sums = json.loads(manifest.read_text())
    sums["merged/model.safetensors"] = sha256_file(weights)
    manifest.write_text(json.dumps(sums))
    with pytest.raises(RegistryError, match="the version tag merged_sha256 records"):
        registry.download(version, "merged")


def test_files_without_a_recorded_checksum_are_refused_unless_a_manifest_covers_them(
    tmp_path: Path,
) -> None:
    settings, registry, version = _register(tmp_path)
    run_id = registry.get_version(version).run_id
    extra = tmp_path / "onnx"
    extra.mkdir()
    (extra / "model.onnx").write_bytes(b"onnx graph")
    registry.client.log_artifacts(run_id, str(extra), "model/onnx")
    with pytest.raises(RegistryError, match="onnx/model.onnx: no recorded checksum"):
        registry.download(version, "onnx")
    # A later stage records what it added in a manifest of its own folder.
    (extra / "checksums.json").write_text(json.dumps(checksums(extra)))
    registry.client.log_artifacts(run_id, str(extra), "model/onnx")
    assert (registry.download(version, "onnx") / "model.onnx").read_bytes() == b"onnx graph"
    assert registry.download(version, "onnx/model.onnx", tmp_path / "f").read_bytes() == b"onnx graph"
    (extra / "model.onnx").write_bytes(b"another graph")  # replaced, manifest left as it was
    registry.client.log_artifact(run_id, str(extra / "model.onnx"), "model/onnx")
    with pytest.raises(RegistryError, match="onnx/model.onnx: sha256"):
        registry.download(version, "onnx/model.onnx", tmp_path / "g")
    assert not (tmp_path / "g" / "model.onnx").exists()
