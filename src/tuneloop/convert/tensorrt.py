"""Optional TensorRT engine from the Q/DQ INT8 graph (TensorRT 10 API, strongly typed).

A strongly typed network takes every precision from the ONNX graph: int8 exactly where the
Q/DQ pairs are and fp32 elsewhere, with no builder precision flags and no TensorRT calibration.
That needs symmetric int8 Q/DQ (zero point 0), which the `tensorrt` quantisation preset writes.
A plan only runs on the GPU model and TensorRT version that built it, so the cache key is
(ONNX sha256, GPU name, TensorRT version, profile), kept in a JSON sidecar beside the plan.
Where TensorRT or a CUDA GPU is missing, `build_engine` returns a result with `skipped` set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.files import atomic_output, sha256_file, write_text_atomic
from tuneloop.convert.runtime import DEFAULT_MAX_LENGTH, encode, load_tokenizer

# Serving shapes: batch 1..32 (8 typical), sequence 8..128 tokens (64 typical). TensorRT tunes
# kernels for `opt` and accepts anything inside [min, max].
DEFAULT_PROFILE: dict[str, tuple[int, int, int]] = {"batch": (1, 8, 32), "seq": (8, 64, 128)}
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# 2 GiB of builder scratch: MiniLM's largest tactic needs far less; the cap keeps a build polite.
WORKSPACE_BYTES = 2 << 30


def tensorrt_status() -> tuple[bool, str]:
    """(True, versions and GPU) when TensorRT imports and a CUDA GPU is visible; else the reasons."""
    reasons = []
    version = None
    try:
        import tensorrt as trt

        version = trt.__version__
    except Exception as error:  # ImportError, or a wheel whose CUDA libraries fail to load
        reasons.append(f"tensorrt is not importable ({type(error).__name__}: {error})")
    gpu = gpu_name()
    if gpu is None:
        reasons.append("no CUDA GPU is visible to torch")
    if reasons:
        return False, "; ".join(reasons)
    return True, f"TensorRT {version} on {gpu}"


def gpu_name() -> str | None:
    """Name of CUDA device 0, or None without one."""
    try:
        import torch

        return str(torch.cuda.get_device_name(0)) if torch.cuda.is_available() else None
    except Exception:
        return None


@dataclass
class EngineResult:
    """A built (or reused) plan, or why there is none."""

    path: str | None = None
    sha256: str | None = None
    key: dict[str, Any] | None = None
    reused: bool = False
    seconds: float = 0.0
    skipped: str | None = None


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def build_engine(
    qdq_onnx: Path, plan_path: Path, profile: dict[str, tuple[int, int, int]] | None = None
) -> EngineResult:
    """Build a strongly typed TensorRT plan from a Q/DQ ONNX file, or reuse a cached one.

    `plan_path` may be a folder: the plan is then named `model.<sha12>.<gpu>.trt<version>.plan`.
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
    sidecar = plan_path.with_name(plan_path.name + ".json")
    if plan_path.is_file() and sidecar.is_file():
        recorded = json.loads(sidecar.read_text())
        if recorded.get("key") == key and recorded.get("sha256") == sha256_file(plan_path):
            return EngineResult(str(plan_path), recorded["sha256"], key, reused=True)
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(qdq_onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {qdq_onnx}: {errors}")
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
        raise RuntimeError(f"TensorRT failed to build an engine from {qdq_onnx}")
    with atomic_output(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    plan_sha = sha256_file(plan_path)
    seconds = time.perf_counter() - start
    write_text_atomic(
        sidecar, json.dumps({"key": key, "sha256": plan_sha, "build_seconds": seconds}, indent=2)
    )
    return EngineResult(str(plan_path), plan_sha, key, reused=False, seconds=seconds)


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
        self.context = self.engine.create_execution_context()
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
        feeds = {}
        for name in self.input_names:
            array = batch[name]
            if array.shape[1] < seq_min:  # pad short batches up to the profile's shortest sequence
                array = np.pad(array, ((0, 0), (0, seq_min - array.shape[1])))
            feeds[name] = torch.from_numpy(array).to("cuda", self._torch_dtype(name)).contiguous()
            self.context.set_input_shape(name, tuple(feeds[name].shape))
            self.context.set_tensor_address(name, feeds[name].data_ptr())
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=self._torch_dtype(self.output_name), device="cuda")
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
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
