"""Serving's composition root: the registry source each worker's follower reads through.

The serve stage (tuneloop.serve) imports no other stage; the service front-end
(`tuneloop.service`) builds a `RegistrySource` and hands it to the follower. It reads the registry
and loads versions:

- `read_state`: ONE `get_registered_model` call, a read that takes no SQLite write lock (no
  experiment, model or tag is ever created by the service): aliases, and the canary weight from
  the registered-model tag `canary_weight`.
- `load`: the backends the version may use (serve/backends.py decides), each file downloaded and
  checked: the merged model's files against the version's checksums.json and sha256 tags
  (Registry.download(verify=True)), the ONNX file against its `int8_sha256` / `onnx_opt_sha256`
  tag over the very bytes the session is built from, the TensorRT plan (named in the conversion
  summary) against `trt_sha256`. A checksum mismatch refuses the version; any other failure of
  one backend lets the next one try. TensorRT is tried only where the convert stage's
  `tensorrt_status` finds the package and a GPU; elsewhere /status says why it stepped aside.

Timeouts: against an MLflow server every registry read and artifact download is an HTTP request,
and MLflow's defaults (120 s each, 7 retries with backoff) would let one hung server hold a read
or a download for a quarter of an hour. The source sets MLflow's own knobs from ServeSettings
(`registry_timeout_s`, `registry_retries`) for the worker process, unless the operator set them;
the follower gives up a whole load after `load_timeout_s` and runs it outside its poll.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.config import Settings
from tuneloop.registry.retention import collected_problem
from tuneloop.registry.store import Registry, RegistryError, VersionInfo
from tuneloop.serve.backends import (
    ONNX_FILES,
    IntegrityError,
    OnnxPredictor,
    TorchPredictor,
    parse_backends,
    plan_backends,
    read_labels,
)
from tuneloop.serve.bundle import LoadedModel, softmax
from tuneloop.serve.follower import RegistryState
from tuneloop.serve.middleware import configured_tokens
from tuneloop.serve.scopes import TOKEN_SCOPES, token_scopes
from tuneloop.serve.settings import ServeSettings

CANARY_WEIGHT_TAG = "canary_weight"
# The service's bearer-token variables, all-scopes first (serve/middleware.py says what each opens).
TOKEN_VARIABLES = tuple(TOKEN_SCOPES)
# Small files the ONNX backends need beside the graph; checked one by one against checksums.json.
SUPPORT_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def service_tokens() -> dict[str, str]:
    """The service's bearer tokens set in the environment, by variable (empty: auth off).

    Raises TokenConflict (a ValueError) when two variables hold the same token, as the service
    itself would at start.
    """
    tokens = configured_tokens()
    token_scopes(tokens)
    return tokens


def parse_weight(raw: str | None) -> tuple[float, str | None]:
    """(weight, problem) from the tag: absent is 0; unreadable or outside [0, 1] is 0 and a problem."""
    if raw is None or raw == "":
        return 0.0, None
    try:
        value = float(raw)
    except ValueError:
        return 0.0, f"canary_weight tag {raw!r} is not a number; canary gets no traffic"
    if not 0.0 <= value <= 1.0:
        return 0.0, f"canary_weight tag {raw!r} is outside [0, 1]; canary gets no traffic"
    return value, None


class RegistrySource:
    """Reads the registry and loads versions for one worker process."""

    def __init__(self, settings: Settings, serve: ServeSettings, threads: int) -> None:
        self.settings, self.serve, self.threads = settings, serve, threads
        # MLflow reads these from the environment on every request; a worker is its own process.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(serve.registry_timeout_s))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(serve.registry_retries))
        self.preference = parse_backends(serve.backends)
        self.cache = serve.cache_dir or settings.home_dir / "serve"
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:  # built on first use, in the follower's thread
            self._registry = Registry(self.settings)
        return self._registry

    def read_state(self) -> RegistryState:
        from mlflow.exceptions import MlflowException

        from tuneloop.registry.client import is_not_found

        try:
            model = self.registry.client.get_registered_model(self.settings.model_name)
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
            # A project declared but never trained yet: nothing to serve, which is not an error
            # (its /v1/<project>/classify answers 503 until a first version is promoted).
            return RegistryState(aliases={}, canary_weight=0.0)
        aliases = {str(a): str(v) for a, v in (model.aliases or {}).items()}
        weight, problem = parse_weight((model.tags or {}).get(CANARY_WEIGHT_TAG))
        return RegistryState(aliases=aliases, canary_weight=weight, weight_problem=problem)

    def load(self, version: str) -> LoadedModel:
        info = self.registry.get_version(version)
        collected = collected_problem(info.version, info.tags)
        if collected:  # say gc, not "file not found" from whichever backend tries first
            raise RegistryError(collected)
        plan, notes = plan_backends(self.preference, info.tags, tensorrt_reason(self.preference))
        if not plan:
            raise RuntimeError(f"no backend may serve v{version}: " + "; ".join(notes))
        self.cache.mkdir(parents=True, exist_ok=True)
        for backend in plan:
            work = Path(tempfile.mkdtemp(prefix=f"v{version}-{backend}-", dir=self.cache))
            try:
                predictor = self._load(backend, info, work)
                serves = info.tags.get("serves", "teacher") if backend != "torch" else "teacher"
                nbytes = _weight_bytes(work)  # read before `finally` removes the download
                return LoadedModel(version, backend, predictor, tuple(notes), serves, nbytes)
            except IntegrityError:
                raise
            except Exception as exc:
                if "does not match its recorded checksums" in str(exc):
                    raise IntegrityError(str(exc)) from exc
                notes.append(f"{backend}: failed to load: {type(exc).__name__}: {exc}")
            finally:
                shutil.rmtree(work, ignore_errors=True)  # everything is in memory now
        raise RuntimeError(f"no backend could load v{version}: " + "; ".join(notes))

    def _load(self, backend: str, info: VersionInfo, work: Path) -> Any:
        from mlflow.artifacts import download_artifacts, list_artifacts

        version, tags = info.version, info.tags
        if backend == "torch":
            folder = self.registry.download(version, "merged", work / "merged", verify=True)
            return TorchPredictor(folder, self.threads, self.serve.max_tokens)
        support = work / "support"
        support.mkdir()
        if info.run_id is None:
            raise RuntimeError(f"v{version} has no run, so its conversion cannot be found")
        listed = {Path(a.path).name for a in list_artifacts(artifact_uri=f"{info.source.rstrip('/')}/merged")}
        for name in SUPPORT_FILES:
            if name in listed:
                got = self.registry.download(version, f"merged/{name}", work / "dl", verify=True)
                shutil.move(str(got), support / name)
        if backend == "tensorrt":
            return self._load_engine(info, support, work)
        filename, tag = ONNX_FILES[backend]
        uri = f"runs:/{info.run_id}/{tags['conversion_path']}/{filename}"
        local = Path(download_artifacts(artifact_uri=uri, dst_path=str(work / "onnx")))
        return OnnxPredictor(
            local, tags[tag], support, self.threads, self.serve.max_tokens, spinning=self.serve.ort_spinning
        )

    def _load_engine(self, info: VersionInfo, support: Path, work: Path) -> TrtPredictor:
        """The TensorRT plan the conversion published (named in its summary), checked and loaded."""
        import hashlib
        import json

        from mlflow.artifacts import download_artifacts

        from tuneloop.steps.convert import SUMMARY

        base = f"runs:/{info.run_id}/{info.tags['conversion_path']}"
        summary = Path(download_artifacts(artifact_uri=f"{base}/{SUMMARY}", dst_path=str(work / "trt")))
        engine = json.loads(summary.read_text()).get("tensorrt") or {}
        if not engine.get("path"):
            raise RuntimeError(f"v{info.version}'s conversion summary names no TensorRT plan")
        name = Path(engine["path"]).name
        plan = Path(download_artifacts(artifact_uri=f"{base}/{name}", dst_path=str(work / "trt")))
        for extra in (f"{name}.json",):  # the sidecar: the shape profile the plan was built for
            download_artifacts(artifact_uri=f"{base}/{extra}", dst_path=str(work / "trt"))
        actual = hashlib.sha256(plan.read_bytes()).hexdigest()
        if actual != info.tags["trt_sha256"]:
            raise IntegrityError(f"{name}: sha256 {actual} but the version records {info.tags['trt_sha256']}")
        return TrtPredictor(plan, support, self.serve.max_tokens)


# The files a backend builds its model from: the weights in memory are about their size.
WEIGHT_SUFFIXES = (".onnx", ".safetensors", ".bin", ".plan", ".engine")


def _weight_bytes(folder: Path) -> int:
    """Bytes of the weight files downloaded under `folder` (what the memory budget counts)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


class TrtPredictor:
    """The convert stage's TensorRT runner behind the service's predictor interface."""

    def __init__(self, plan: Path, support: Path, max_tokens: int) -> None:
        from tuneloop.convert.tensorrt import TrtClassifier

        self.engine = TrtClassifier(plan, support, max_tokens)
        self.labels = read_labels(support)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return softmax(self.engine.predict_logits(texts))


def tensorrt_reason(preference: Sequence[str]) -> str:
    """Why TensorRT cannot serve on this host ("" when it can); asked only when it is wanted."""
    if "tensorrt" not in preference:
        return ""
    from tuneloop.convert.tensorrt import tensorrt_status

    available, reason = tensorrt_status()
    return "" if available else f"unavailable: {reason}"
