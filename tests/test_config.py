"""Settings: defaults are the embedded world; environment and a config file reach the bigger one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.config import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in ("TUNELOOP_HOME", "TUNELOOP_CONFIG", "TUNELOOP_TRACKING_URI", "TUNELOOP_ARTIFACT_ROOT"):
        monkeypatch.delenv(key, raising=False)


def test_defaults_are_local_sqlite_under_home(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.home_dir == (tmp_path / ".tuneloop").resolve()
    assert settings.resolved_tracking_uri == f"sqlite:///{tmp_path.resolve() / '.tuneloop' / 'mlflow.db'}"
    assert settings.resolved_artifact_root == (tmp_path / ".tuneloop" / "mlartifacts").resolve().as_uri()
    assert not (tmp_path / ".tuneloop").exists(), "settings must not touch the disk"


def test_environment_and_config_file(tmp_path, monkeypatch):
    config = tmp_path / "tuneloop.yaml"
    config.write_text("label_column: category\nepochs: 3\ntracking_uri: http://mlflow:5000\n")
    monkeypatch.setenv("TUNELOOP_CONFIG", str(config))
    monkeypatch.setenv("TUNELOOP_EPOCHS", "5")  # environment wins over the file
    monkeypatch.setenv("TUNELOOP_LORA_TARGET_MODULES", "query,key,value")
    settings = load_settings()
    assert settings.label_column == "category"
    assert settings.epochs == 5
    assert settings.lora_target_modules == ["query", "key", "value"]
    assert settings.resolved_tracking_uri == "http://mlflow:5000"
    assert settings.resolved_artifact_root is None, "a tracking server chooses (and proxies) artifacts"


def test_missing_config_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNELOOP_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(FileNotFoundError, match="TUNELOOP_CONFIG"):
        load_settings()


def test_overrides_and_validation():
    assert load_settings(home=Path("/tmp/x")).home_dir == Path("/tmp/x")
    with pytest.raises(ValueError, match="eval_fraction"):
        load_settings(eval_fraction=1.5)
    with pytest.raises(ValueError, match="int8_preset"):
        load_settings(int8_preset="int4")


def test_int8_preset_names_are_the_conversion_recipes():
    # config.py keeps the names as data so it imports no stage; the recipes live in convert.quantize.
    from tuneloop.config import INT8_PRESETS
    from tuneloop.convert.quantize import PRESETS

    assert sorted(INT8_PRESETS) == sorted(PRESETS)
    for name in PRESETS:
        assert load_settings(int8_preset=name).int8_preset == name


def test_int8_preset_reaches_the_conversion_settings(monkeypatch):
    from tuneloop.steps.convert import conversion_settings

    monkeypatch.setenv("TUNELOOP_INT8_PRESET", "cpu7")
    assert conversion_settings(load_settings()).preset == "cpu7"
    monkeypatch.delenv("TUNELOOP_INT8_PRESET")
    assert conversion_settings(load_settings()).preset == "cpu"


def test_golden_per_label_zero_is_refused_with_the_reason(monkeypatch):
    # 0 was accepted, then every round failed the union gate: refuse it where it is set.
    monkeypatch.setenv("TUNELOOP_GOLDEN_PER_LABEL", "0")
    with pytest.raises(ValueError, match="golden_per_label"):
        load_settings()


def test_landing_settle_seconds_reaches_the_ingest_config(monkeypatch):
    from tuneloop.steps.ingest import ingest_config

    monkeypatch.setenv("TUNELOOP_LANDING_SETTLE_SECONDS", "0.5")
    assert ingest_config(load_settings()).settle_seconds == 0.5
