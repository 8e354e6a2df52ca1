"""INT8 quantisation: static Q/DQ with a recorded calibration set, dynamic as the fallback.

What `quantize_int8_static` does, each choice measured on all-MiniLM-L6-v2 (benchmarks/README.md
has the tables). Figures are INT8-vs-fp32 argmax agreement on BANKING77 test texts:

1. Start from the plain export, not the fused graph. ORT's Q/DQ quantiser has no handler for the
   fused Attention and EmbedLayerNormalization ops, so from the fused graph only 18 of 36 MatMuls
   and no embedding get int8: 67 MB (0.74x fp32), against 24 MB (0.27x) from the plain graph.
2. Word embeddings as per-row int8 (`graph_edits.quantize_word_embeddings`): agreement from the
   table alone 0.988 with ORT's one-scale Q/DQ Gather, 0.995 per row (logistic-regression head).
3. Q/DQ only on the inputs of MatMuls with constant weights. Every other reader of a quantised
   activation (residual Add, Shape) gets the float tensor back (`keep_float_side_paths`:
   0.884 -> 0.970); attention's activation x activation MatMuls are excluded by name
   (`activation_matmuls`: 0.973 -> 0.977); MatMul outputs stay float, which is what lets ORT fuse
   DQ -> MatMul into MatMulIntegerToFloat (with Q/DQ'd outputs nothing fused, and INT8 ran ~2.5x
   slower than fp32).
4. Outlier channels out of the int8 MatMuls (`graph_edits.prepare_int8_matmul_inputs`): a channel
   whose calibrated peak is over 4x the median channel's is multiplied in float beside the int8
   MatMul. MiniLM's LayerNorm outputs carry channel 99 at up to 28 against a median peak of 1.9,
   and that one channel used to set the whole tensor's scale. LoRA-tuned MiniLM, 3,080 texts:
   0.982 -> 0.990 (mean |logit diff| 0.150 -> 0.088).
5. Full 8-bit weights (preset `cpu`, below) and MinMax with a moving average over calibration
   batches (ORT's `CalibMovingAverage`): 0.990 -> 0.993 -> 0.996 (mean |logit diff| 0.088 -> 0.077
   -> 0.071). SmoothQuant-style scaling (alpha 0.3-0.7) on top of step 4 made it worse (0.108 to
   0.136); the Entropy and Percentile calibrators were no better than MinMax.
6. Per-token scaling of each int8 MatMul's input (same function): mean |logit diff| 0.071 ->
   0.039, agreement 0.996 (a model with float activations and int8 weights reaches 0.998 and
   0.028 here, so activations now cost about as much as weights).
7. With per-token scaling on, a lower outlier bar pays again (OUTLIER_RATIO below): ratio 2.5
   and up to 16 channels, mean |logit diff| 0.039 -> 0.035, agreement 0.9968 and 0.9977 on two
   training runs of the same model. INT8 p50 at batch 1 / 128 tokens, 1 thread: 13.3 ms for
   steps 1-3, 16.0 ms with 4-7 (ONNX fp32 30 ms, PyTorch 44 ms).

Recipes (`RECIPES`, each an INT8 candidate that variants.py builds, judges and times):
`static` is steps 1-7; `static_merged` also merges Q, K and V into one MatMul per layer
(graph_merge.py), so steps 4 and 6 run once per layer input instead of once per MatMul;
`static_lean` is merged and scales per token only the LayerNorm outputs (the inputs of Q/K/V and of
the FFN), leaving the attention-context and GELU inputs one static scale each.

Presets (ONNX Runtime 1.32's `quantize_static` docstring, "Choosing parameters for CPU inference"):

* `cpu` - uint8 activations (asymmetric), int8 weights per channel, full 8 bits. On x86 without
  VNNI (this AVX2 EPYC) the u8 x s8 kernel multiplies with `vpmaddubsw`, which adds two u8*s8
  products into a saturating int16: 2 x 255 x 127 = 64,770 > 32,767. It clips only where two
  neighbouring activations near the top of their range meet two near-full weights of one sign;
  with the outliers split off (step 4) activations sit near their zero point, and measured on
  this CPU 8-bit weights beat the 7-bit ones that rule it out (agreement 0.993 vs 0.990, mean
  |logit diff| 0.077 vs 0.088). VNNI cores accumulate in int32 and never saturate.
* `cpu7` - the same with `reduce_range=True` (7-bit weights): 2 x 255 x 63 = 32,130 fits int16,
  so nothing can saturate. For a model whose parity fails on a pre-VNNI CPU with `cpu`.
* `tensorrt` - int8 activations *and* weights, symmetric (zero point 0, the only form TensorRT's
  explicit Q/DQ accepts), per channel, full 8-bit range (GPU int8 tensor cores do not saturate).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.files import atomic_output, temporary_name
from tuneloop.convert.graph_edits import (
    activation_matmuls,
    keep_float_side_paths,
    pick_outlier_channels,
    prepare_int8_matmul_inputs,
    quantize_word_embeddings,
    weight_matmul_inputs,
)
from tuneloop.convert.graph_merge import merge_shared_input_matmuls
from tuneloop.convert.runtime import DEFAULT_MAX_LENGTH, encode, load_tokenizer

# Only MatMuls with a constant weight: the word table gets its own per-row int8 (graph_edits), and
# Gather/Add/Softmax/LayerNorm stay float (ORT has no int8 kernels for them that would pay off).
QUANTIZED_OP_TYPES = ("MatMul",)
# A channel is an outlier above OUTLIER_RATIO x the median channel's peak, at most
# OUTLIER_MAX_CHANNELS per tensor (graph_edits.pick_outlier_channels). With per-token scaling on,
# LoRA-tuned MiniLM, 3,080 texts, mean |logit diff| / batch-1 latency (1 thread):
#   ratio 4, 8 channels (32 in all): 0.0389 / 15.5 ms     ratio 2.5, 16 (149): 0.0349 / 16.0 ms
#   ratio 2, 32 (330): 0.0338 / 17.0 ms                   float activations, int8 weights: 0.028
# Agreement moved by a few of 3,080 texts between them (0.9948-0.9981); 2.5 / 16 is where the
# gain per millisecond flattens. The float side path costs at most 16 x 1536 weights per MatMul.
OUTLIER_RATIO = 2.5
OUTLIER_MAX_CHANNELS = 16
# Peaks per channel come from this many calibration texts; 256 found the same channels as 1,024.
OUTLIER_TEXTS = 256


@dataclass(frozen=True)
class QuantPreset:
    """How activations and weights are quantised for one kind of target."""

    name: str
    activation_type: str  # "QUInt8" or "QInt8"
    weight_type: str
    reduce_range: bool
    activation_symmetric: bool
    per_channel: bool = True


PRESETS = {
    "cpu": QuantPreset("cpu", "QUInt8", "QInt8", reduce_range=False, activation_symmetric=False),
    "cpu7": QuantPreset("cpu7", "QUInt8", "QInt8", reduce_range=True, activation_symmetric=False),
    "tensorrt": QuantPreset("tensorrt", "QInt8", "QInt8", reduce_range=False, activation_symmetric=True),
}


@dataclass(frozen=True)
class StaticRecipe:
    """Which rewrites a static INT8 candidate applies before Q/DQ (see the module docstring)."""

    name: str
    outlier_ratio: float | None = OUTLIER_RATIO  # None: no float side path for outlier channels
    outlier_max_channels: int = OUTLIER_MAX_CHANNELS
    # Which int8 MatMul inputs are scaled per token: "all", "layernorm" (LayerNorm outputs only,
    # the inputs of Q/K/V and of the FFN, where [CLS] keeps its magnitude in outlier channels), "none".
    per_token: str = "all"
    merge_shared_inputs: bool = False  # Q, K, V as one MatMul (graph_merge)

    def scales_per_token(self, tensor: str) -> bool:
        """Whether the int8 MatMul input `tensor` gets per-token scaling under this recipe."""
        if self.per_token == "layernorm":
            return "LayerNorm" in tensor
        return self.per_token == "all"


RECIPES = {
    "static": StaticRecipe("static"),
    "static_merged": StaticRecipe("static_merged", merge_shared_inputs=True),
    "static_lean": StaticRecipe("static_lean", per_token="layernorm", merge_shared_inputs=True),
}


@dataclass
class CalibrationManifest:
    """Which texts calibrated the activation ranges, so a conversion can be reproduced."""

    count: int
    seed: int
    source_count: int
    max_length: int
    batch_size: int
    sha256: str  # over the sampled texts, newline-joined, in sample order
    preset: dict[str, Any]
    method: str
    embedding_rows: int = 0  # word-embedding rows stored as per-row int8 (0: table kept float)
    # Activation tensor -> input channels multiplied in float beside its int8 MatMuls.
    outlier_channels: dict[str, list[int]] = field(default_factory=dict)
    outlier_ratio: float | None = OUTLIER_RATIO
    recipe: str = "static"
    # One sha256 per sampled text, in sample order, and one over all the source texts: enough to
    # find the sample again in the snapshot it came from (same texts, seed and count) and to prove
    # it, without publishing training texts inside the model artifacts (issue 8).
    text_sha256: list[str] = field(default_factory=list)
    source_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


def texts_sha256(texts: Sequence[str]) -> str:
    """Order-sensitive hash of a list of texts."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def sample_calibration_texts(texts: Sequence[str], count: int, seed: int) -> list[str]:
    """A seeded sample of `count` texts (all of them, shuffled, when fewer)."""
    pool = list(texts)
    return random.Random(seed).sample(pool, min(count, len(pool)))


class TextCalibrationReader:
    """`CalibrationDataReader` over texts, tokenised exactly as `OnnxClassifier` tokenises."""

    def __init__(
        self,
        tokenizer: Any,
        texts: Sequence[str],
        batch_size: int,
        max_length: int,
        pad_to: int | None = None,
    ) -> None:
        self._batches = [
            encode(tokenizer, texts[i : i + batch_size], max_length, pad_to)
            for i in range(0, len(texts), batch_size)
        ]
        self._iter: Iterator[dict[str, Any]] = iter(self._batches)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def channel_peaks(model_path: Path, batches: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per input channel, the largest |value| each weight-MatMul input reaches over `batches`.

    Padding positions are left out: they are not what the model serves, and they would widen the
    peaks the outlier test reads.
    """
    import onnx
    import onnxruntime as ort

    names = list(weight_matmul_inputs(model_path))
    model = onnx.load(str(model_path))
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {item.name for item in session.get_inputs()}
    peaks: dict[str, np.ndarray] = {}
    for batch in batches:
        real = np.asarray(batch["attention_mask"]).astype(bool)
        values = session.run(names, {k: v for k, v in batch.items() if k in inputs})
        for name, value in zip(names, values, strict=True):
            if value.ndim != real.ndim + 1:  # not [batch, sequence, channels]: judge every row
                top = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            else:
                top = np.abs(value[real]).max(axis=0)
            peaks[name] = top if name not in peaks else np.maximum(peaks[name], top)
    return peaks


class _DropPreprocessAdvice(logging.Filter):
    """ORT advises `quant_pre_process` on every call; it would fuse ops this recipe keeps apart."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocess_advice() -> Iterator[None]:
    advice = _DropPreprocessAdvice()
    logging.getLogger().addFilter(advice)  # ORT logs it with logging.warning, on the root logger
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def quantize_int8_static(
    onnx_path: Path,
    out_path: Path,
    tokenizer_dir: Path,
    calibration_texts: Sequence[str],
    *,
    count: int = 1024,
    seed: int = 13,
    batch_size: int = 16,
    max_length: int = DEFAULT_MAX_LENGTH,
    preset: str = "cpu",
    method: str = "MinMax",
    op_types: Sequence[str] = QUANTIZED_OP_TYPES,
    recipe: StaticRecipe | None = None,
) -> CalibrationManifest:
    """Static INT8 in Q/DQ format, calibrated on a seeded sample; returns the calibration record."""
    recipe = recipe or RECIPES["static"]
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    chosen = PRESETS[preset]
    sample = sample_calibration_texts(calibration_texts, count, seed)
    if not sample:
        raise ValueError("static quantisation needs at least one calibration text")
    tokenizer = load_tokenizer(tokenizer_dir)
    # The histogram calibrators (Entropy, Percentile) stack every batch's tensors into one array,
    # so their batches must share a shape: pad all to the sample's longest text.
    pad_to = None
    if method != "MinMax":
        pad_to = max(
            len(ids) for ids in tokenizer(sample, truncation=True, max_length=max_length)["input_ids"]
        )
    reader = TextCalibrationReader(tokenizer, sample, batch_size, max_length, pad_to)
    pre = temporary_name(Path(out_path))
    try:
        with atomic_output(Path(out_path)) as tmp:
            # Rewrite the embedding first, so calibration sees the int8 table's real rounding.
            shutil.copyfile(onnx_path, pre)
            # Not for `tensorrt`: TensorRT 10's strongly typed networks take int8 only inside Q/DQ
            # pairs, and the per-row table is an int8 Gather then Cast; its embeddings stay float.
            embedding_rows = quantize_word_embeddings(pre) if preset != "tensorrt" else 0
            if recipe.merge_shared_inputs:
                merge_shared_input_matmuls(pre)
            outliers: dict[str, list[int]] = {}
            if recipe.outlier_ratio is not None:
                peaks = channel_peaks(
                    pre,
                    [
                        encode(tokenizer, sample[i : i + batch_size], max_length)
                        for i in range(0, min(len(sample), OUTLIER_TEXTS), batch_size)
                    ],
                )
                picked = {
                    name: pick_outlier_channels(top, recipe.outlier_ratio, recipe.outlier_max_channels)
                    for name, top in peaks.items()
                }
                outliers = {name: chans for name, chans in picked.items() if chans}
            side_matmuls = prepare_int8_matmul_inputs(pre, outliers, per_token=recipe.scales_per_token)
            with _without_preprocess_advice():
                quantize_static(
                    str(pre),
                    str(tmp),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=chosen.per_channel,
                    reduce_range=chosen.reduce_range,
                    activation_type=getattr(QuantType, chosen.activation_type),
                    weight_type=getattr(QuantType, chosen.weight_type),
                    calibrate_method=getattr(CalibrationMethod, method),
                    op_types_to_quantize=list(op_types),
                    nodes_to_exclude=activation_matmuls(pre) + side_matmuls,
                    extra_options={
                        # Per-batch ranges averaged rather than the single most extreme batch's.
                        "CalibMovingAverage": method == "MinMax",
                        "ActivationSymmetric": chosen.activation_symmetric,
                        "WeightSymmetric": True,
                        # Float MatMul outputs: DQ -> MatMul -> Add then fuses into one int8 GEMM with a
                        # float result (MatMulIntegerToFloat); a Q/DQ'd output would also round every
                        # projection to 8 bits before its bias and residual add.
                        "OpTypesToExcludeOutputQuantization": list(op_types),
                    },
                )
            keep_float_side_paths(tmp, tuple(op_types))
    finally:
        pre.unlink(missing_ok=True)
    return CalibrationManifest(
        count=len(sample),
        seed=seed,
        source_count=len(calibration_texts),
        max_length=max_length,
        batch_size=batch_size,
        sha256=texts_sha256(sample),
        preset=asdict(chosen),
        method=method,
        embedding_rows=embedding_rows,
        outlier_channels=outliers,
        outlier_ratio=recipe.outlier_ratio,
        recipe=recipe.name,
        text_sha256=[texts_sha256([text]) for text in sample],
        source_sha256=texts_sha256(list(calibration_texts)),
    )


def quantize_int8_dynamic(onnx_path: Path, out_path: Path) -> None:
    """Dynamic INT8 (weights int8 per channel, activation ranges computed per batch at run time).

    The fallback when no calibration texts are given. `reduce_range=True` for the same u8s8
    saturation reason as the `cpu` preset.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_output(Path(out_path)) as tmp, _without_preprocess_advice():
        quantize_dynamic(
            str(onnx_path),
            str(tmp),
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
            # Shape inference cannot type the outputs of the fused contrib ops (Attention, ...).
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
