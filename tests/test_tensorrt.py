"""TensorRT path without a GPU: a fake `tensorrt` module and fake GPU probes drive the real code of
tensorrt.py and pipeline.py (detection, cache, build failure, engine parity gate, API result checks);
the `tensorrt` preset's real Q/DQ graph is walked for ops a strongly typed TensorRT 10 network takes."""

from __future__ import annotations

import hashlib
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tuneloop.convert import tensorrt as trt_mod

LABELS = ["card_arrival", "lost_card", "top_up"]
WORDS = ["card", "arrived", "lost", "stolen", "top", "up", "money", "pending", "refund", "pin"]


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 12)))) for _ in range(n)]


def make_fake_tensorrt(builds: list[str], serialized: bytes | None = b"fake plan") -> types.ModuleType:
    """The slice of the TensorRT 10 Python API that build_engine calls; records each build."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0"  # type: ignore[attr-defined]

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class Network:
        num_inputs = 3

        def __init__(self) -> None:
            self.path = ""

        def get_input(self, i: int) -> types.SimpleNamespace:
            return types.SimpleNamespace(name=("input_ids", "attention_mask", "token_type_ids")[i])

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            self.network.path = path
            return True

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            assert flags == 1 << 5, "the network must be strongly typed"
            return Network()

        def create_builder_config(self) -> types.SimpleNamespace:
            return types.SimpleNamespace(
                set_memory_pool_limit=lambda *a: None, add_optimization_profile=lambda p: None
            )

        def create_optimization_profile(self) -> types.SimpleNamespace:
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network: Network, config: object) -> bytes | None:
            builds.append(network.path)
            if serialized is None:
                return None
            return serialized + hashlib.sha256(Path(network.path).read_bytes()).digest()

    trt.Logger = Logger  # type: ignore[attr-defined]
    trt.Builder = Builder  # type: ignore[attr-defined]
    trt.OnnxParser = OnnxParser  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)  # type: ignore[attr-defined]
    trt.TensorIOMode = types.SimpleNamespace(INPUT=1, OUTPUT=2)  # type: ignore[attr-defined]
    return trt


class FakeRunner:
    """Stands in for TrtClassifier: ONNX fp32 logits, optionally negated to break parity."""

    negate = False

    def __init__(self, plan: str, tokenizer_dir: Path, max_length: int) -> None:
        from tuneloop.convert.runtime import OnnxClassifier

        assert Path(plan).is_file()
        self.model = OnnxClassifier(Path(tokenizer_dir) / "model.onnx", max_length=max_length)

    def predict_logits(self, texts: list[str], batch_size: int | None = None) -> np.ndarray:
        logits = self.model.predict_logits(texts, batch_size)
        return -logits if self.negate else logits


@pytest.fixture
def gpu_host(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A host with (fake) TensorRT and a (fake) H100; returns the list of builds."""
    builds: list[str] = []
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(builds))
    monkeypatch.setattr(trt_mod, "GPU_PROBES", (("fake driver", lambda: "NVIDIA H100 80GB HBM3"),))
    monkeypatch.setattr(trt_mod, "TrtClassifier", FakeRunner)
    monkeypatch.setattr(FakeRunner, "negate", False)
    return builds


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from tuneloop.testing import make_tiny_bert

    root = tmp_path_factory.mktemp("tiny")
    base = make_tiny_bert(root / "base")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=3, id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)}
    )
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 2.0)  # logits spread, so argmax depends on the input
    model.save_pretrained(root / "clf", safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).is_file():
            shutil.copy2(base / name, root / "clf" / name)
    return root / "clf"


EVAL_SETS = {
    "eval": (_texts(24, 1), [LABELS[i % 3] for i in range(24)]),
    "golden": (_texts(9, 3), [LABELS[i % 3] for i in range(9)]),
}
LENIENT = {
    "max_abs_logit_diff_fp32": 1.0,
    "int8_max_macro_f1_drop_points": 100,
    "int8_min_argmax_agreement": 0,
}


def _convert(model_dir: Path, out: Path, **settings: object):
    from tuneloop.convert import ConversionSettings, convert_model

    return convert_model(
        model_dir, out, _texts(48, 2), EVAL_SETS, LENIENT, ConversionSettings(threads=1, **settings)
    )


# --- GPU detection ---------------------------------------------------------------------------
def test_gpu_is_found_through_cuda_not_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt([]))
    monkeypatch.setattr(trt_mod, "GPU_PROBES", (("fake driver", lambda: "NVIDIA H100 80GB HBM3"),))
    assert trt_mod.tensorrt_status() == (True, "TensorRT 10.99.0 on NVIDIA H100 80GB HBM3")


def test_no_gpu_is_reported_in_words_per_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> str | None:
        raise OSError("libcuda.so.1: cannot open shared object file")

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt([]))
    monkeypatch.setattr(trt_mod, "GPU_PROBES", (("CUDA driver", missing), ("nvidia-smi", lambda: None)))
    available, reason = trt_mod.tensorrt_status()
    assert not available
    assert reason == (
        "no NVIDIA GPU found (CUDA driver: OSError: libcuda.so.1: cannot open shared object file; "
        "nvidia-smi: no device)"
    )


# --- engine cache, build failure, parity gate (through convert_model) --------------------------
def test_engine_cache_hits_across_conversions_into_the_same_folder(gpu_host, classifier_dir, tmp_path):
    first = _convert(classifier_dir, tmp_path)
    assert first.tensorrt.path and not first.tensorrt.reused and len(gpu_host) == 1
    # Other CPU settings: a fresh conversion, but the same TensorRT Q/DQ graph, GPU and profile.
    second = _convert(classifier_dir, tmp_path, quantize_from="optimized")
    assert not second.reused and second.tensorrt.reused and len(gpu_host) == 1
    assert second.tensorrt.sha256 == first.tensorrt.sha256
    assert Path(second.tensorrt.path).name in second.artifacts


def test_build_failure_keeps_the_cpu_artifacts_and_says_why(monkeypatch, gpu_host, classifier_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(gpu_host, serialized=None))
    result = _convert(classifier_dir, tmp_path)
    assert {"model.onnx", "model.int8.onnx", "model.int8.trt.onnx"} <= set(result.artifacts)
    assert result.parity.passed and result.tensorrt.path is None
    assert result.tensorrt.status.startswith("failed: EngineError: TensorRT built no engine")
    assert not list(tmp_path.glob("*.plan"))


def test_engine_out_of_parity_is_not_published(monkeypatch, gpu_host, classifier_dir, tmp_path):
    from tuneloop.convert import ConversionSettings, convert_model

    monkeypatch.setattr(FakeRunner, "negate", True)  # the engine's argmax now disagrees
    strict = {**LENIENT, "int8_min_argmax_agreement": 0.9}
    result = convert_model(
        classifier_dir, tmp_path, _texts(48, 2), EVAL_SETS, strict, ConversionSettings(threads=1)
    )
    assert result.tensorrt.path is None and not [n for n in result.artifacts if n.endswith(".plan")]
    assert result.tensorrt.failed.startswith("parity: eval: engine argmax agreement")
    assert result.tensorrt.parity["eval"]["n"] == 24
    # Same artifacts, thresholds that let it through: re-judged from the cache, not rebuilt.
    monkeypatch.setattr(FakeRunner, "negate", False)
    again = convert_model(
        classifier_dir, tmp_path, _texts(48, 2), EVAL_SETS, LENIENT, ConversionSettings(threads=1)
    )
    assert again.tensorrt.path and again.tensorrt.reused and len(gpu_host) == 1
    assert Path(again.tensorrt.path).name in again.artifacts


# --- TrtClassifier checks TensorRT's return values -----------------------------------------------
def _runtime_module(engine: object) -> types.ModuleType:
    trt = make_fake_tensorrt([])
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine)  # type: ignore[attr-defined]
    return trt


def test_a_plan_that_does_not_deserialize_is_a_clear_error(monkeypatch, classifier_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", _runtime_module(None))
    (tmp_path / "model.plan").write_bytes(b"built elsewhere")
    with pytest.raises(trt_mod.EngineError, match="could not deserialize model.plan"):
        trt_mod.TrtClassifier(tmp_path / "model.plan", classifier_dir)


def test_a_refused_input_shape_is_a_clear_error(monkeypatch, classifier_dir, tmp_path):
    names = ["input_ids", "attention_mask", "token_type_ids", "logits"]
    context = types.SimpleNamespace(set_input_shape=lambda name, shape: False)
    engine = types.SimpleNamespace(
        create_execution_context=lambda: context,
        num_io_tensors=4,
        get_tensor_name=lambda i: names[i],
        get_tensor_mode=lambda n: 2 if n == "logits" else 1,
    )
    monkeypatch.setitem(sys.modules, "tensorrt", _runtime_module(engine))
    (tmp_path / "model.plan").write_bytes(b"plan")
    runner = trt_mod.TrtClassifier(tmp_path / "model.plan", classifier_dir)
    with pytest.raises(trt_mod.EngineError, match=r"refused input input_ids of shape \(1, 8\)"):
        runner.predict_logits(["lost card"])


# --- the tensorrt preset's graph ------------------------------------------------------------------
# ONNX ops of a BERT Q/DQ export that TensorRT 10's ONNX parser takes in a strongly typed network.
TENSORRT_OPS = {
    "Add", "Cast", "Concat", "Constant", "ConstantOfShape", "DequantizeLinear", "Div", "Equal", "Erf",
    "Expand", "Gather", "Identity", "MatMul", "Mul", "Pow", "QuantizeLinear", "ReduceMax", "ReduceMean",
    "Reshape", "Shape", "Slice", "Softmax", "Sqrt", "Sub", "Tanh", "Transpose", "Unsqueeze", "Where",
    "Abs", "Max", "Min", "Clip", "Range", "Not", "Less", "Greater", "LayerNormalization", "Squeeze",
    "Flatten", "GreaterOrEqual", "And", "Gemm",
}  # fmt: skip


def test_tensorrt_preset_graph_has_only_ops_a_strongly_typed_network_takes(classifier_dir, tmp_path):
    import onnx

    from tuneloop.convert.export import export_onnx
    from tuneloop.convert.quantize import quantize_int8_static

    export_onnx(classifier_dir, tmp_path / "model.onnx")
    quantize_int8_static(
        tmp_path / "model.onnx", tmp_path / "trt.onnx", classifier_dir, _texts(32, 2), preset="tensorrt"
    )
    graph = onnx.load(str(tmp_path / "trt.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    int8 = {n for n, i in inits.items() if i.data_type == onnx.TensorProto.INT8}
    int8 |= {o for node in graph.node if node.op_type == "QuantizeLinear" for o in node.output}
    problems = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_OPS:
            problems.append(
                f"{node.name}: {node.domain or 'ai.onnx'}.{node.op_type} is not in the allowed set"
            )
        data = node.input[:1] if node.op_type == "QuantizeLinear" else node.input  # not its zero point
        if node.op_type != "DequantizeLinear" and any(i in int8 for i in data):
            problems.append(f"{node.name}: {node.op_type} reads int8 outside a Q/DQ pair")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = onnx.numpy_helper.to_array(inits[node.input[2]])
            if zero.dtype != np.int8 or zero.any():
                problems.append(
                    f"{node.name}: zero point {zero.dtype} {zero.ravel()[:3]} is not symmetric int8"
                )
    assert not problems, "\n".join(problems)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) > 0
