"""A registered version as an MLflow Model: written once at registration, choosing its backend at load.

The version's source folder (`runs:/<run>/model`) is immutable once registered, yet the best backend
is only known after `convert`. So the folder holds a pyfunc written as models-from-code (the code
file `pyfunc_model.py`, no pickle) whose `model_config` names the registered model and the run, and
the choice is made at load time from the version's tags, read from the registry MLflow itself
points at (MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI):

    every file of the downloaded folder ─> sha256 vs checksums.json, checksums.json vs the
        checksums_sha256 tag, weights vs their sha256 tags
    conversion=passed ─> conversions/<key>/model.int8.onnx vs int8_sha256 ─> ORT INT8
        (the graphs of whichever model the conversion chose: the version's own or a student of it,
        tag `serves`; a student's graph answers with the labels of merged/, which are its own)
        (unless int8_serve=fp32: the conversion timed INT8 no faster than fp32 on its host)
    then, or when INT8 fails to load ─> model.opt.onnx vs onnx_opt_sha256 ─> ORT fp32
    conversion not passed, or no ONNX graph loads ─> the merged PyTorch model (never for a version
        that serves a student: that model is the teacher, not what the version says it serves)

A file that fails its checksum refuses the version; only another failure lets the next backend try.
The backends and the choice between them are serving's (`tuneloop.serve.backends`), so the MLflow
Model and the BentoML service run the same code on the same files.

MLflow parses `MLmodel` and runs `pyfunc_model.py` before `load_context` checks anything, so those
two files are verified only by `load_verified` (public as `tuneloop.model.load`): it resolves a
`models:/` URI to one version, downloads the folder, verifies every file, and only then hands the
checked local copy to MLflow's own loader.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config import PROJECT_ROOT, mask_uri
from tuneloop.files import sha256_file
from tuneloop.registry.verify import MANIFEST, checksum_problems
from tuneloop.serve.backends import (
    ONNX_FILES,
    IntegrityError,
    OnnxPredictor,
    TorchPredictor,
    plan_backends,
    threads_per_session,
)

log = logging.getLogger("tuneloop.mlflow_model")

CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
LOCK_FILE = PROJECT_ROOT / "requirements.lock"
# What the pyfunc imports at load besides tuneloop:
# transformers' tokenizers and safetensors read the merged model; onnxruntime runs the INT8 graph.
PIP_PACKAGES = (
    "mlflow",
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "onnxruntime",
    "numpy",
    "pandas",
)
BACKENDS = ("onnx-int8", "onnx-fp32", "torch")  # best first; fp32 ONNX where INT8 lost to it (int8_serve)
# Written by MLflow itself into a folder it downloads for a `models:/` URI; not one of ours.
MLFLOW_META_FILES = frozenset({"registered_model_meta"})
DEFAULT_TOP_K = 3
# The MLflow Model's input example (input_example.json, serving_input_example.json): fixed and
# neutral. The folder is published with every version, so it must hold no row of anyone's data.
INPUT_EXAMPLE = ("I would like to know the status of my request",)
# Texts per forward pass: evaluate's batch size, so each batch pads as it does there.
BATCH_SIZE = 64


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_requirements(lock: Path = LOCK_FILE) -> list[str]:
    """`name==version` for PIP_PACKAGES as pinned in requirements.lock.

    tuneloop itself is not listed: it is not on PyPI, and a name pip would look up there could
    install someone else's package. The model loads where tuneloop is installed (`--env-manager
    local`, the tuneloop environment).

    Outside a checkout (no lock beside the package) the installed versions stand in: they are what
    `make` installed from the lock.
    """
    from importlib.metadata import version

    pins: dict[str, str] = {}
    if lock.is_file():
        for line in lock.read_text().splitlines():
            name, sep, pinned = line.split("#", 1)[0].strip().partition("==")
            if sep:
                pins[_canonical(name)] = f"{name.strip()}=={pinned.strip()}"
    wanted = []
    for name in PIP_PACKAGES:
        pin = pins.get(_canonical(name))
        wanted.append(pin or f"{name}=={version(name)}")
    return wanted


def signature() -> Any:
    """Input: one column of texts; output: label, score and top_k [{label, score}]; param `top_k`.

    The input column is unnamed: MLflow checks a named one before the model sees it and refuses a
    plain list (`Model is missing inputs ['text']`); unnamed, a DataFrame with a `text` column, a
    list, a Series and a single string all pass, and `read_texts` picks the `text` column.
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    scored = Object([Property("label", "string"), Property("score", "double")])
    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema(
            [ColSpec("string", "label"), ColSpec("double", "score"), ColSpec(Array(scored), "top_k")]
        ),
        params=ParamSchema([ParamSpec("top_k", "long", DEFAULT_TOP_K)]),
    )


def write_pyfunc(model_dir: Path, model_name: str, run_id: str, max_length: int) -> list[str]:
    """Write the MLmodel and its files into `model_dir` (before its checksums.json); return their names."""
    import mlflow
    import pandas as pd

    config = {"model_name": model_name, "run_id": run_id, "max_length": max_length, "top_k": DEFAULT_TOP_K}
    with tempfile.TemporaryDirectory(prefix="tuneloop-pyfunc-") as tmp:
        out = Path(tmp) / "pyfunc"  # save_model wants a folder that does not exist yet
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(CODE_FILE),
            model_config=config,
            signature=signature(),
            input_example=pd.DataFrame({"text": list(INPUT_EXAMPLE)}),
            pip_requirements=pip_requirements(),
        )
        names = sorted(p.name for p in out.iterdir())
        clash = [n for n in names if (model_dir / n).exists()]
        if clash:
            raise FileExistsError(f"the MLflow Model files {clash} would overwrite files of {model_dir}")
        for name in names:
            shutil.move(str(out / name), str(model_dir / name))
    return names


@dataclass(frozen=True)
class LoadedVersion:
    """What the pyfunc serves from: the version, the backend chosen, and why better ones stood aside."""

    version: str
    backend: str
    predictor: Any  # tuneloop.serve.bundle.Predictor
    notes: tuple[str, ...]
    model: str = "teacher"  # the `serves` tag: the version's own model or one of its students


def folder_problems(model_dir: Path, tags: Mapping[str, str]) -> list[str]:
    """Files of a downloaded version folder that do not match its anchored checksums.json or tags."""
    import json

    manifest = model_dir / MANIFEST
    if not manifest.is_file():
        return [f"{MANIFEST}: missing, so no file of the folder can be verified"]
    data = manifest.read_bytes()
    actual = {
        str(p.relative_to(model_dir)): sha256_file(p)
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and str(p.relative_to(model_dir)) not in MLFLOW_META_FILES
    }
    return checksum_problems(actual, hashlib.sha256(data).hexdigest(), json.loads(data), tags, "")


def find_version(client: Any, model_dir: Path, model_name: str, run_id: str) -> tuple[str, dict[str, str]]:
    """(version, tags) of the version this folder was loaded as.

    Loaded through `models:/`, MLflow names the version in `registered_model_meta`; it must come from
    this folder's run. Otherwise (a `runs:/` URI, a local copy) the newest version of the run: a round
    registers one, and a later one re-registers the same folder.
    """
    import mlflow
    import yaml

    meta = model_dir / "registered_model_meta"
    if meta.is_file():
        named = yaml.safe_load(meta.read_text()) or {}
        if named.get("model_name") == model_name and named.get("model_version"):
            mv = client.get_model_version(model_name, str(named["model_version"]))
            if mv.run_id == run_id:
                return str(mv.version), dict(mv.tags or {})
    found = client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if not found:
        raise LookupError(
            f"no version of {model_name!r} was registered from run {run_id} in the registry at "
            f"{mask_uri(mlflow.get_registry_uri())}: set MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI) "
            "to the store the model came from; its checks and its backend are read from the version's tags"
        )
    newest = max(found, key=lambda mv: int(mv.version))
    return str(newest.version), dict(newest.tags or {})


# The URIs a verified load takes: a version by alias or by number (what carries the tags).
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))/?$")


def resolve_version(client: Any, uri: str) -> tuple[str, Any]:
    """(registered model name, ModelVersion) that `models:/<name>@<alias>` or `models:/<name>/<N>` names."""
    match = MODELS_URI.match(uri.strip())
    if match is None:
        raise ValueError(
            f"{uri!r}: give models:/<name>@<alias> or models:/<name>/<version>; only a registered "
            "version carries the tags its files are verified against (a runs:/ URI or a folder has none)"
        )
    name = match["name"]
    if match["alias"]:
        return name, client.get_model_version_by_alias(name, match["alias"])
    return name, client.get_model_version(name, match["version"])


def download_verified(uri: str, dst: Path) -> Path:
    """Download the version `uri` names into `dst` (new or empty) and verify every file; return it.

    MLmodel and pyfunc_model.py are checked like every other file, before anything parses or runs
    them. Raises IntegrityError naming each file that fails, after deleting `dst`'s download.
    """
    import mlflow
    from mlflow import MlflowClient

    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst} is not an empty folder: a verified download goes into a folder of its own")
    name, mv = resolve_version(MlflowClient(), uri)
    dst.mkdir(parents=True, exist_ok=True)
    # Through models:/<name>/<N>, so MLflow writes registered_model_meta and the pyfunc's own check
    # (load_version) later reads the version's tags, not those of another version of the same run.
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(dst))
    )
    problems = folder_problems(local, dict(mv.tags or {}))
    if problems:
        shutil.rmtree(dst, ignore_errors=True)
        raise IntegrityError(
            f"refusing {uri} (v{mv.version}): its files do not match their recorded checksums, so "
            "nothing of it was parsed or run; the download was deleted:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return local


def load_verified(uri: str, dst: Path | None = None) -> Any:
    """`mlflow.pyfunc.load_model(uri)` with every file verified first (`download_verified`).

    The checked copy is kept in `dst` when given (new or empty), else in a temporary folder removed
    once loaded (the model is in memory by then).
    """
    import mlflow

    if dst is not None:
        return mlflow.pyfunc.load_model(str(download_verified(uri, Path(dst))))
    with tempfile.TemporaryDirectory(prefix="tuneloop-model-") as tmp:
        return mlflow.pyfunc.load_model(str(download_verified(uri, Path(tmp) / "model")))


def load_version(model_dir: Path, config: Mapping[str, Any]) -> LoadedVersion:
    """Verify the downloaded folder, then load the best backend its version's tags allow.

    Raises IntegrityError, naming each file, when any file (or the INT8 graph) is not the one
    recorded: a tampered version is refused, never served by a weaker backend instead.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()  # the tracking and registry URIs MLflow's own loader used
    run_id = str(config["run_id"])
    version, tags = find_version(client, model_dir, str(config["model_name"]), run_id)
    problems = folder_problems(model_dir, tags)
    if problems:
        raise IntegrityError(
            f"refusing to load v{version} from {model_dir}: its files do not match its recorded "
            "checksums:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    plan, notes = plan_backends(BACKENDS, tags, "not used by the MLflow Model")
    threads, max_tokens = threads_per_session(1), int(config.get("max_length", 64))
    merged = model_dir / "merged"
    for backend in plan:
        try:
            if backend == "torch":
                predictor: Any = TorchPredictor(merged, threads, max_tokens)
            else:
                filename, tag = ONNX_FILES[backend]
                with tempfile.TemporaryDirectory(prefix=f"tuneloop-v{version}-") as tmp:
                    local = mlflow.artifacts.download_artifacts(
                        artifact_uri=f"runs:/{run_id}/{tags['conversion_path']}/{filename}", dst_path=tmp
                    )
                    # The sha256 is checked over the bytes the session is built from (OnnxPredictor);
                    # the tokenizer and labels come from merged/, verified above.
                    predictor = OnnxPredictor(Path(local), tags[tag], merged, threads, max_tokens)
        except IntegrityError:
            raise
        except Exception as exc:  # a backend that cannot load steps aside for the next, as in serving
            notes.append(f"{backend}: failed to load: {type(exc).__name__}: {exc}")
            continue
        serves = tags.get("serves", "teacher") if backend != "torch" else "teacher"
        loaded = LoadedVersion(version, backend, predictor, tuple(notes), serves)
        log.warning(
            "tuneloop MLflow Model: v%s (%s) loaded with %s%s",
            version,
            serves,
            backend,
            f" ({'; '.join(notes)})" if notes else "",
        )
        return loaded
    raise RuntimeError(f"no backend could load v{version}: " + "; ".join(notes))


def read_texts(model_input: Any) -> list[str]:
    """Texts from a DataFrame (`text` column, or its only column), a dict {"text": [...]}, a list.

    MLflow turns a dict of lists into a ONE-row DataFrame whose cell is the list, so list cells are
    flattened in order.
    """
    import numpy as np
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "text" in model_input.columns:
            model_input = model_input["text"]
        elif len(model_input.columns) == 1:
            model_input = model_input.iloc[:, 0]
        else:
            raise ValueError(f"expected a `text` column, got columns {list(model_input.columns)}")
    elif isinstance(model_input, Mapping):
        if "text" not in model_input:
            raise ValueError(f"expected a `text` key, got {sorted(model_input)}")
        model_input = model_input["text"]
    if isinstance(model_input, str):
        model_input = [model_input]
    texts: list[Any] = []
    for item in model_input:
        texts.extend(
            item.tolist() if isinstance(item, np.ndarray) else item if isinstance(item, list) else [item]
        )
    wrong = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if wrong:
        raise TypeError(f"every input must be a text; items {wrong[:5]} are not strings")
    return texts


def score_texts(loaded: LoadedVersion, texts: list[str], top_k: int) -> Any:
    """A DataFrame with label, score and top_k [{label, score}] per text, in input order."""
    import numpy as np
    import pandas as pd

    labels = loaded.predictor.labels
    k = max(1, min(int(top_k), len(labels)))
    rows = []
    for start in range(0, len(texts), BATCH_SIZE):
        proba = loaded.predictor.predict_proba(texts[start : start + BATCH_SIZE])
        for p in proba:
            # Stable sort of -p: ties keep index order, so the first entry is argmax's choice.
            top = [{"label": labels[i], "score": float(p[i])} for i in np.argsort(-p, kind="stable")[:k]]
            rows.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
    return pd.DataFrame(rows, columns=["label", "score", "top_k"])
