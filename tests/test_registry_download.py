"""Registry.download verifies what it fetched against what was recorded at registration.

A version is registered the way `tuneloop train` does it (a `model/` folder with checksums.json, the
weight hashes and the manifest's own hash as tags) in a real SQLite store with local artifacts; the
stored files are then tampered with where they lie, as a bad disk or a bad actor would.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from tuneloop.config import Settings, load_settings
from tuneloop.files import sha256_file
from tuneloop.registry.store import Registry, RegistryError, checksums

CONFIG = {"id2label": {"0": "a", "1": "b"}, "label2id": {"a": 0, "b": 1}}
SWAPPED = {"id2label": {"0": "b", "1": "a"}, "label2id": {"b": 0, "a": 1}}


def _register(tmp_path: Path, anchored: bool = True) -> tuple[Settings, Registry, str]:
    settings = load_settings(home=tmp_path / "home")
    registry = Registry(settings)
    model = tmp_path / "model"
    (model / "adapter").mkdir(parents=True)
    (model / "merged").mkdir()
    (model / "adapter" / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (model / "adapter" / "labels.json").write_text('["a", "b"]')
    (model / "merged" / "model.safetensors").write_bytes(b"merged weights")
    (model / "merged" / "config.json").write_text(json.dumps(CONFIG))
    (model / "checksums.json").write_text(json.dumps(checksums(model)))
    with mlflow.start_run(experiment_id=registry.experiment_id("t")) as run:
        mlflow.log_artifacts(str(model), "model")
    tags = {
        "adapter_sha256": sha256_file(model / "adapter" / "adapter_model.safetensors"),
        "merged_sha256": sha256_file(model / "merged" / "model.safetensors"),
    }
    if anchored:  # what steps/round.py sets at registration; versions from before it lack it
        tags["checksums_sha256"] = sha256_file(model / "checksums.json")
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


def _rehash(settings: Settings, *edits: tuple[str, str]) -> None:
    """Rewrite stored files and re-hash the stored checksums.json to match, as a careful attacker would."""
    manifest = _stored(settings, "model/checksums.json")
    sums = json.loads(manifest.read_text())
    for relative, text in edits:
        stored = _stored(settings, f"model/{relative}")
        stored.write_text(text)
        sums[relative] = sha256_file(stored)
    manifest.write_text(json.dumps(sums))


def test_swapped_labels_with_a_rehashed_checksums_file_are_refused_by_the_manifest_tag(
    tmp_path: Path,
) -> None:
    settings, registry, version = _register(tmp_path)
    recorded = registry.get_version(version).tags["checksums_sha256"]
    _rehash(settings, ("merged/config.json", json.dumps(SWAPPED)), ("adapter/labels.json", '["b", "a"]'))
    # Every way a reader asks: the whole folder (pyfunc), merged/ (service, convert), adapter/ (the
    # next round's parent, evaluate) and one file (the service's ONNX support files).
    for subpath in ("", "merged", "adapter", "merged/config.json"):
        target = tmp_path / f"dl-{subpath.replace('/', '-') or 'all'}"
        with pytest.raises(RegistryError) as caught:
            registry.download(version, subpath, target)
        message = str(caught.value)
        assert "checksums.json: sha256" in message, message
        assert f"the version tag checksums_sha256 records {recorded}" in message, message
        assert not any(p.is_file() for p in target.rglob("*")), subpath  # nothing left to use


def test_a_version_without_the_manifest_tag_is_refused_until_it_is_re_anchored(tmp_path: Path) -> None:
    settings, registry, version = _register(tmp_path, anchored=False)
    with pytest.raises(RegistryError) as caught:
        registry.download(version, "merged", tmp_path / "dl")
    message = str(caught.value)
    assert "no checksums_sha256 tag" in message and "Versions registered before checksums_sha256" in message
    # Re-anchoring (registry/README.md): an operator who vouches for the stored manifest tags its sha256.
    registry.set_tags(version, {"checksums_sha256": sha256_file(_stored(settings, "model/checksums.json"))})
    assert (registry.download(version, "merged", tmp_path / "ok") / "config.json").is_file()


def test_a_manifest_added_in_a_subfolder_after_registration_covers_nothing(tmp_path: Path) -> None:
    settings, registry, version = _register(tmp_path)
    run_id = registry.get_version(version).run_id
    # Swapped labels with a manifest of their own beside them: only the root manifest is a reference.
    extra = tmp_path / "merged"
    extra.mkdir()
    (extra / "config.json").write_text(json.dumps(SWAPPED))
    (extra / "checksums.json").write_text(json.dumps(checksums(extra)))
    registry.client.log_artifacts(run_id, str(extra), "model/merged")
    with pytest.raises(RegistryError) as caught:
        registry.download(version, "merged", tmp_path / "dl")
    message = str(caught.value)
    assert "merged/config.json: sha256" in message, message
    assert "merged/checksums.json: no recorded checksum" in message, message
    with pytest.raises(RegistryError, match="merged/config.json: sha256"):
        registry.download(version, "merged/config.json", tmp_path / "one")
    # A later stage's files added to the folder are refused too, manifest or not.
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"onnx graph")
    (onnx / "checksums.json").write_text(json.dumps(checksums(onnx)))
    registry.client.log_artifacts(run_id, str(onnx), "model/onnx")
    with pytest.raises(RegistryError, match="onnx/model.onnx: no recorded checksum"):
        registry.download(version, "onnx/model.onnx", tmp_path / "g")
    assert not (tmp_path / "g" / "model.onnx").exists()
