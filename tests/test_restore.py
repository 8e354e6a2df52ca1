"""`tuneloop restore N`: a version gc collected is rebuilt from its kept adapter, verified file by file
against its checksums.json, and then serves exactly what it served before gc. A rebuild that is
not the registered model is refused, uploads nothing, and leaves the version collected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.registry.retention import GC_TAG
from tuneloop.registry.store import Registry, RegistryError
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences

TEXTS = ["apple banana cherry grape", "kiwi lemon mango", "alpha", "plum pear fig date"]


@pytest.fixture
def collected(tmp_path: Path):
    """A tiny version, trained and converted, holding no alias, then collected by gc."""
    from tuneloop.serve.settings import ServeSettings
    from tuneloop.steps.convert import convert_step
    from tuneloop.steps.gc import gc_step
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step
    from tuneloop.steps.serve import RegistrySource
    from tuneloop.testing import make_tiny_bert

    policy = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    policy["retention"].update(keep_whole_behind_aliases=0, min_age_days=0)
    policy["conversion"] = {
        "max_abs_logit_diff_fp32": 1.0,
        "int8_max_macro_f1_drop_points": 100,
        "int8_min_argmax_agreement": 0,
    }
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    keyword_sentences(["alpha", "beta", "gamma"], 30, seed=0).to_csv(tmp_path / "data.csv", index=False)
    settings = load_settings(
        home=tmp_path / "home",
        base_model=str(make_tiny_bert(tmp_path / "tiny", hidden_size=64)),
        epochs=2,
        **TINY_TRAIN_SETTINGS,
        policy_path=tmp_path / "policy.yaml",
    )
    ingest_step(settings, [tmp_path / "data.csv"])
    version = train_step(settings, progress=False)["version"]
    convert_step(settings, version)
    registry = Registry(settings)
    client = MlflowClient(settings.resolved_tracking_uri)
    for alias in [a for a, v in registry.aliases().items() if v == version]:
        client.delete_registered_model_alias(settings.model_name, alias)
    source = RegistrySource(settings, ServeSettings(), threads=1)
    before = source.load(version)
    probs = before.predictor.predict_proba(TEXTS)
    result = gc_step(settings, by="ops")
    assert [v["version"] for v in result["versions"] if v["action"] == "collect"] == [version]
    return settings, version, source, before.backend, probs


def test_a_restored_version_serves_what_it_served_before_gc(collected):
    from tuneloop.steps.restore import restore_step

    settings, version, source, backend, probs = collected
    with pytest.raises(RegistryError, match="tuneloop restore"):
        source.load(version)  # collected: the service refuses it by name
    result = restore_step(settings, version, by="ops")
    assert result["restored"] is True and "verified file by file" in result["message"]
    # Rebuilt on the host that built them: the ONNX graphs are bit-for-bit the recorded ones.
    assert result["graphs"] and all(g["same"] for g in result["graphs"].values()), result["graphs"]
    tags = Registry(settings).get_version(version).tags
    assert GC_TAG not in tags and '"by": "ops"' in tags["gc_restored"]
    again = source.load(version)
    assert again.backend == backend
    assert np.array_equal(again.predictor.predict_proba(TEXTS), probs)
    # The verified download of the merged model passes again (checksums.json and merged_sha256).
    Registry(settings).download(version, "merged", verify=True)
    assert restore_step(settings, version)["restored"] is False  # whole now: nothing to do


def test_a_rebuild_that_is_not_the_registered_model_is_refused_and_uploads_nothing(collected, monkeypatch):
    from tuneloop.steps.restore import RestoreError, restore_step
    from tuneloop.train import predict

    settings, version, source, _, _ = collected
    real_merge = predict.merge_adapter

    def other_rounding(adapter_dir: Path, out_dir: Path) -> Path:
        out = real_merge(adapter_dir, out_dir)
        weights = out / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1  # one bit of one weight: what another CPU's rounding could do
        weights.write_bytes(bytes(data))
        return out

    monkeypatch.setattr(predict, "merge_adapter", other_rounding)
    with pytest.raises(RestoreError, match=r"merged/model.safetensors: rebuilt sha256 \w+, recorded \w+"):
        restore_step(settings, version, by="ops")
    info = Registry(settings).get_version(version)
    assert GC_TAG in info.tags and "gc_restored" not in info.tags
    listed = MlflowClient(settings.resolved_tracking_uri).list_artifacts(info.run_id, "model/merged")
    assert listed == []
    assert not (settings.work_dir / "restore").exists() or not any((settings.work_dir / "restore").iterdir())
