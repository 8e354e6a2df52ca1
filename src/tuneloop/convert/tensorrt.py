"""Optional TensorRT engine from the Q/DQ INT8 graph (TensorRT 10 API, strongly typed).

A strongly typed network takes every precision from the ONNX graph: int8 exactly where the
Q/DQ pairs are and fp32 elsewhere, with no builder precision flags and no TensorRT calibration.
That needs symmetric int8 Q/DQ (zero point 0) and no int8 tensor outside a Q/DQ pair, which the
`tensorrt` quantisation preset writes. A plan only runs on the GPU model and TensorRT version that
built it, so the cache key is (ONNX sha256, GPU name, TensorRT version, profile), kept in a JSON
sidecar beside the plan in a cache folder that outlives one conversion.

The GPU is found through CUDA itself (the driver library, then nvidia-smi), never through torch:
tuneloop installs the CPU build of torch, which reports no GPU on every host. Where TensorRT or a
GPU is missing, `tensorrt_status` says why in words and the step is `skipped`; where a build or
the engine's parity fails, the result is `failed` with the reason, and no plan is published.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.files import atomic_output, sha256_file, write_text_atomic
from tuneloop.convert.parity import coerce_thresholds, compare_set, int8_reasons
from tuneloop.convert.runtime import DEFAULT_MAX_LENGTH, OnnxClassifier, encode, load_tokenizer

# Serving shapes: batch 1..32 (8 typical), sequence 8..128 tokens (64 typical). TensorRT tunes
# kernels for `opt` and accepts anything inside [min, max].
DEFAULT_PROFILE: dict[str, tuple[int, int, int]] = {"batch": (1, 8, 32), "seq": (8, 64, 128)}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# 2 GiB of builder scratch: MiniLM's largest tactic needs far less; the cap keeps a build polite.
WORKSPACE_BYTES = 2 << 30
# nvidia-smi answers in well under a second on a healthy host; 10 s marks a hung driver.
NVIDIA_SMI_TIMEOUT_S = 10
# Plans are cached here, under the conversion's output folder, keyed by their sidecar; the folder
# survives a new conversion into the same output folder, so an unchanged Q/DQ graph is not rebuilt.
ENGINE_CACHE = "engines"


class EngineError(RuntimeError):
    """TensorRT refused a step (parse, build, deserialize, input shape); the message says which."""


def _probe_cuda_driver() -> str | None:
    """Name of device 0 through the CUDA driver API (libcuda ships with every NVIDIA driver)."""
    lib = ctypes.CDLL("libcuda.so.1")
    count, device = ctypes.c_int(0), ctypes.c_int(0)
    for call, args in (("cuInit", (0,)), ("cuDeviceGetCount", (ctypes.byref(count),))):
        status = getattr(lib, call)(*args)
        if status != 0:  # CUresult: 100 = no device, 999 = unknown, ...
            raise OSError(f"{call} returned CUDA error {status}")
    if count.value < 1:
        return None
    name = ctypes.create_string_buffer(256)
    if lib.cuDeviceGet(ctypes.byref(device), 0) != 0 or lib.cuDeviceGetName(name, 256, device) != 0:
        raise OSError("cuDeviceGet / cuDeviceGetName failed for device 0")
    return name.value.decode(errors="replace") or "CUDA device 0"


def _probe_nvidia_smi() -> str | None:
    """Name of GPU 0 as nvidia-smi lists it."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise FileNotFoundError("nvidia-smi is not on PATH")
    done = subprocess.run(
        [exe, "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=NVIDIA_SMI_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise OSError(f"nvidia-smi exited {done.returncode}: {done.stderr.strip()[:200]}")
    names = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    return names[0] if names else None


# Tried in order; the first that names a device wins. Tests replace this tuple with fakes.
GPU_PROBES: tuple[tuple[str, Callable[[], str | None]], ...] = (
    ("CUDA driver (libcuda.so.1)", _probe_cuda_driver),
    ("nvidia-smi", _probe_nvidia_smi),
)


def detect_gpu() -> tuple[str | None, str]:
    """(name of GPU 0, which probe found it), or (None, what each probe answered)."""
    answers = []
    for label, probe in GPU_PROBES:
        try:
            name = probe()
        except Exception as error:  # a missing library or tool is an answer, not a crash
            answers.append(f"{label}: {type(error).__name__}: {error}")
            continue
        if name:
            return name, label
        answers.append(f"{label}: no device")
    return None, "; ".join(answers) or "no GPU probe configured"


def tensorrt_status() -> tuple[bool, str]:
    """(True, "TensorRT <version> on <GPU>") when both are usable; else (False, why, in words)."""
    reasons = []
    version = None
    try:
        import tensorrt as trt

        version = trt.__version__
    except Exception as error:  # ImportError, or a wheel whose CUDA libraries fail to load
        reasons.append(f"tensorrt is not importable ({type(error).__name__}: {error})")
    gpu, how = detect_gpu()
    if gpu is None:
        reasons.append(f"no NVIDIA GPU found ({how})")
    if reasons:
        return False, "; ".join(reasons)
    return True, f"TensorRT {version} on {gpu}"


def gpu_name() -> str | None:
    """Name of GPU 0, or None without one."""
    return detect_gpu()[0]


@dataclass
class EngineResult:
    """A built (or reused) plan, or why there is none: `skipped` (cannot run here) or `failed`."""

    path: str | None = None  # the published plan; None unless built and in parity
    sha256: str | None = None
    key: dict[str, Any] | None = None
    reused: bool = False  # the plan came from the cache, no build
    seconds: float = 0.0
    skipped: str | None = None
    failed: str | None = None
    parity: dict[str, Any] | None = None  # per set: figures of the engine against ONNX fp32

    @property
    def status(self) -> str:
        """One line for the `trt` tag and the summary: built, skipped: <why> or failed: <why>."""
        if self.failed:
            return f"failed: {self.failed}"
        if self.skipped:
            return self.skipped if self.skipped.startswith("skipped") else f"skipped: {self.skipped}"
        return f"built ({Path(self.path).name})" if self.path else "none"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def build_engine(
    qdq_onnx: Path, plan_path: Path, profile: dict[str, tuple[int, int, int]] | None = None
) -> EngineResult:
    """Build a strongly typed TensorRT plan from a Q/DQ ONNX file, or reuse a cached one.

    `plan_path` may be a folder (the engine cache): the plan is then named
    `model.<sha12>.<gpu>.trt<version>.plan`. A parse or build failure raises `EngineError`.
    """
    available, reason = tensorrt_status()
    if not available:
        return EngineResult(skipped=reason)
    import tensorrt as trt

    profile = profile or DEFAULT_PROFILE
    onnx_sha = sha256_file(Path(qdq_onnx))
    key = {
        "onnx_sha256": onnx_sha,
        "gpu": gpu_name(),
        "tensorrt": trt.__version__,
        "profile": {k: list(v) for k, v in profile.items()},
    }
    plan_path = Path(plan_path)
    if plan_path.is_dir() or not plan_path.suffix:
        plan_path = plan_path / f"model.{onnx_sha[:12]}.{_slug(key['gpu'] or '')}.trt{key['tensorrt']}.plan"
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = plan_path.with_name(plan_path.name + ".json")
    if plan_path.is_file() and sidecar.is_file():
        recorded = json.loads(sidecar.read_text())
        if recorded.get("key") == key and recorded.get("sha256") == sha256_file(plan_path):
            return EngineResult(str(plan_path), recorded["sha256"], key, reused=True)
    start = time.perf_counter()
    serialized = _build_plan(trt, Path(qdq_onnx), profile)
    with atomic_output(plan_path) as tmp:
        tmp.write_bytes(serialized)
    plan_sha = sha256_file(plan_path)
    seconds = time.perf_counter() - start
    write_text_atomic(
        sidecar, json.dumps({"key": key, "sha256": plan_sha, "build_seconds": seconds}, indent=2)
    )
    return EngineResult(str(plan_path), plan_sha, key, reused=False, seconds=seconds)


def _build_plan(trt: Any, qdq_onnx: Path, profile: dict[str, tuple[int, int, int]]) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(qdq_onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {qdq_onnx.name}: {errors or 'no parser message'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    shapes = builder.create_optimization_profile()
    (b_min, b_opt, b_max), (s_min, s_opt, s_max) = profile["batch"], profile["seq"]
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        shapes.set_shape(name, (b_min, s_min), (b_opt, s_opt), (b_max, s_max))
    config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"TensorRT built no engine from {qdq_onnx.name} (build_serialized_network returned None; "
            "the TensorRT log above says why)"
        )
    return bytes(serialized)


def judge_engine(
    fp32_logits: Mapping[str, np.ndarray],
    engine_logits: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    thresholds: Any,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The INT8 gate applied to the engine: macro-F1 drop and argmax agreement against ONNX fp32.

    Returns (figures per set, reasons it fails); no reasons means the engine may be published.
    """
    limits = coerce_thresholds(thresholds)
    figures: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []
    for name, fp32 in fp32_logits.items():
        s = compare_set(fp32, fp32, engine_logits[name], labels[name])
        figures[name] = {
            "n": s.n,
            "macro_f1": s.int8_macro_f1,
            "macro_f1_drop_points": s.int8_macro_f1_drop_points,
            "argmax_agreement": s.int8_argmax_agreement,
            "max_abs_logit_diff": s.int8_max_abs_logit_diff,
        }
        reasons += int8_reasons(f"{name}: engine", s, limits)
    if not any(f["n"] for f in figures.values()):
        reasons.append("no evaluation rows were given, so the engine's parity was not shown")
    return figures, reasons


def publish_engine(
    qdq_onnx: Path,
    out_dir: Path,
    fp32_onnx: Path,
    eval_sets: Mapping[str, tuple[Sequence[str], np.ndarray]],
    thresholds: Any,
    *,
    profile: dict[str, tuple[int, int, int]] | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
    threads: int | None = None,
) -> EngineResult:
    """Build (or reuse from `out_dir/engines/`) a plan, gate it on parity, copy it into `out_dir`.

    `eval_sets` is {name: (texts, label indices)}. Never raises for TensorRT's sake: a failed
    build, load or parity comes back as `failed` with the reason, so the CPU artifacts still publish.
    """
    out_dir = Path(out_dir)
    try:
        engine = build_engine(qdq_onnx, out_dir / ENGINE_CACHE, profile)
        if engine.skipped or engine.path is None:
            return engine
        runner = TrtClassifier(engine.path, out_dir, max_length)
        fp32 = OnnxClassifier(fp32_onnx, threads=threads, max_length=max_length)
        ref = {name: fp32.predict_logits(list(t), batch_size) for name, (t, _) in eval_sets.items()}
        got = {name: runner.predict_logits(list(t), batch_size) for name, (t, _) in eval_sets.items()}
        labels = {name: np.asarray(y) for name, (_, y) in eval_sets.items()}
        engine.parity, reasons = judge_engine(ref, got, labels, thresholds)
    except Exception as error:  # reported as trt=failed: <why>; the ONNX artifacts are unaffected
        return EngineResult(failed=f"{type(error).__name__}: {error}")
    if reasons:
        engine.failed = "parity: " + "; ".join(reasons)
        engine.path = None
        return engine
    cached = Path(engine.path)
    for source in (cached, cached.with_name(cached.name + ".json")):
        with atomic_output(out_dir / source.name) as tmp:
            shutil.copyfile(source, tmp)
    engine.path = str(out_dir / cached.name)
    return engine


class TrtClassifier:
    """Runs a TensorRT plan on torch CUDA tensors (TensorRT 10: set_input_shape, execute_async_v3)."""

    def __init__(
        self, plan_path: Path | str, tokenizer_dir: Path | str, max_length: int = DEFAULT_MAX_LENGTH
    ):
        """Deserialize the plan; shapes come from its sidecar (the profile it was built for)."""
        import tensorrt as trt
        import torch

        self._torch, self._trt = torch, trt
        plan_path = Path(plan_path)
        sidecar = plan_path.with_name(plan_path.name + ".json")
        recorded = json.loads(sidecar.read_text())["key"]["profile"] if sidecar.is_file() else DEFAULT_PROFILE
        self.profile = {k: tuple(v) for k, v in recorded.items()}
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:  # TensorRT logs the cause and returns None rather than raising
            raise EngineError(
                f"TensorRT could not deserialize {plan_path.name}: a plan only loads on the GPU model "
                f"and TensorRT version that built it (TensorRT here: {trt.__version__})"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"TensorRT could not create an execution context for {plan_path.name}")
        self.tokenizer = load_tokenizer(Path(tokenizer_dir))
        self.max_length = min(max_length, self.profile["seq"][2])
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_name = next(n for n in names if n not in self.input_names)

    def _torch_dtype(self, name: str) -> Any:
        trt, torch = self._trt, self._torch
        table = {
            trt.int64: torch.int64,
            trt.int32: torch.int32,
            trt.float32: torch.float32,
            trt.float16: torch.float16,
        }
        return table[self.engine.get_tensor_dtype(name)]

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for one encoded batch inside the profile's batch and sequence range."""
        torch = self._torch
        seq_min = self.profile["seq"][0]
        arrays = {}
        for name in self.input_names:
            array = batch[name]
            if array.shape[1] < seq_min:  # pad short batches up to the profile's shortest sequence
                array = np.pad(array, ((0, 0), (0, seq_min - array.shape[1])))
            # Shapes first, before any copy to the GPU: False means outside the built profile.
            if not self.context.set_input_shape(name, tuple(array.shape)):
                raise EngineError(
                    f"TensorRT refused input {name} of shape {tuple(array.shape)}; the plan's profile "
                    f"allows batch {self.profile['batch'][0]}..{self.profile['batch'][2]} and sequence "
                    f"{self.profile['seq'][0]}..{self.profile['seq'][2]}"
                )
            arrays[name] = array
        feeds = {}
        for name, array in arrays.items():
            feeds[name] = torch.from_numpy(array).to("cuda", self._torch_dtype(name)).contiguous()
            self.context.set_tensor_address(name, feeds[name].data_ptr())
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=self._torch_dtype(self.output_name), device="cuda")
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError("TensorRT execution failed (execute_async_v3 returned False)")
        stream.synchronize()
        return out.float().cpu().numpy()

    def predict_logits(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """Logits for texts, in batches no larger than the profile allows."""
        size = min(batch_size or self.profile["batch"][1], self.profile["batch"][2])
        outputs = [
            self.run(encode(self.tokenizer, texts[i : i + size], self.max_length))
            for i in range(0, len(texts), size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, 0), dtype=np.float32)
