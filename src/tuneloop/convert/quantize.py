"""INT8 quantisation: static Q/DQ with a recorded calibration set, dynamic as the fallback.

What `quantize_int8_static` does, each choice measured on all-MiniLM-L6-v2 with a 77-way BANKING77
head (argmax agreement with fp32 on 770 test texts; full table in benchmarks/README.md):

1. Start from the plain export, not the fused graph. ORT's Q/DQ quantiser has no handler for the
   fused Attention and EmbedLayerNormalization ops, so from the fused graph only 18 of 36 MatMuls
   and no embedding get int8: 67 MB (0.74x fp32), against 24 MB (0.27x) from the plain graph.
2. Word embeddings as per-row int8 (`graph_edits.quantize_word_embeddings`): agreement from the
   table alone 0.988 with ORT's one-scale Q/DQ Gather, 0.995 per row.
3. Q/DQ only on the inputs of MatMuls with constant weights. Every other reader of a quantised
   activation (residual Add, Shape) gets the float tensor back (`keep_float_side_paths`:
   0.884 -> 0.970); attention's activation x activation MatMuls are excluded by name
   (`activation_matmuls`: 0.973 -> 0.977); MatMul outputs stay float, which is what lets ORT fuse
   DQ -> MatMul into MatMulIntegerToFloat (with Q/DQ'd outputs nothing fused, and INT8 ran ~2.5x
   slower than fp32).
4. Preset `cpu` (below), MinMax calibration over 1,024 texts: 0.983 (256 texts: 0.977; Entropy
   and Percentile were no better). SmoothQuant-style scaling (alpha 0.5-0.9) moved agreement
   between 0.956 and 0.978 with no reliable gain, so it is not used.

Presets (ONNX Runtime 1.32's `quantize_static` docstring, "Choosing parameters for CPU inference"):

* `cpu` - uint8 activations (asymmetric), int8 weights per channel, `reduce_range=True`. On x86
  without VNNI (this AVX2 EPYC) the u8 x s8 kernel multiplies with `vpmaddubsw`, which adds two
  u8*s8 products into a saturating int16: 2 x 255 x 127 = 64,770 > 32,767, so large activations
  meeting large weights clip. 7-bit weights bound it at 2 x 255 x 63 = 32,130, which fits.
  Measured: agreement 0.973 with it, 0.962 with full 8-bit weights (saturating). VNNI cores accumulate in
  int32 and lose only the 8th weight bit to this preset.
* `tensorrt` - int8 activations *and* weights, symmetric (zero point 0, the only form TensorRT's
  explicit Q/DQ accepts), per channel, full 8-bit range (GPU int8 tensor cores do not saturate).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.convert.files import atomic_output, temporary_name
from tuneloop.convert.graph_edits import (
    activation_matmuls,
    keep_float_side_paths,
    quantize_word_embeddings,
)
from tuneloop.convert.runtime import DEFAULT_MAX_LENGTH, encode, load_tokenizer

# Only MatMuls with a constant weight: the word table gets its own per-row int8 (graph_edits), and
# Gather/Add/Softmax/LayerNorm stay float (ORT has no int8 kernels for them that would pay off).
QUANTIZED_OP_TYPES = ("MatMul",)


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
    "cpu": QuantPreset("cpu", "QUInt8", "QInt8", reduce_range=True, activation_symmetric=False),
    "tensorrt": QuantPreset("tensorrt", "QInt8", "QInt8", reduce_range=False, activation_symmetric=True),
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
    texts: list[str] = field(default_factory=list)

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
) -> CalibrationManifest:
    """Static INT8 in Q/DQ format, calibrated on a seeded sample; returns the calibration record."""
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
            embedding_rows = quantize_word_embeddings(pre)
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
                nodes_to_exclude=activation_matmuls(pre),
                extra_options={
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
        texts=sample,
    )


def quantize_int8_dynamic(onnx_path: Path, out_path: Path) -> None:
    """Dynamic INT8 (weights int8 per channel, activation ranges computed per batch at run time).

    The fallback when no calibration texts are given. `reduce_range=True` for the same u8s8
    saturation reason as the `cpu` preset.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_output(Path(out_path)) as tmp:
        quantize_dynamic(
            str(onnx_path),
            str(tmp),
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
            # Shape inference cannot type the outputs of the fused contrib ops (Attention, ...).
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
