"""Convert stage: a merged transformers classifier -> ONNX fp32, fused fp32, INT8, TensorRT, parity.

Modules (heavy libraries are imported inside functions, so importing this package is cheap):
`export` (torch -> ONNX), `optimize` (ORT BERT fusions), `quantize` (static Q/DQ and dynamic INT8),
`graph_edits` (per-row int8 embeddings, float residual paths), `tensorrt` (optional engine),
`runtime` (checksum-verified ONNX Runtime classifier), `parity` (pure gates), `reference` (the
PyTorch and fp32 logits parity is judged against), `record` (conversion.json and when it is
current), `settings` (what else changes the outputs), `pipeline` (`convert_model`, idempotent and
atomic), `files` (atomic writes, sha256).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_onnx": "export",
    "optimize_onnx": "optimize",
    "quantize_int8_static": "quantize",
    "quantize_int8_dynamic": "quantize",
    "tensorrt_status": "tensorrt",
    "build_engine": "tensorrt",
    "TrtClassifier": "tensorrt",
    "OnnxClassifier": "runtime",
    "ChecksumMismatch": "runtime",
    "check_parity": "parity",
    "ParityReport": "parity",
    "ParityThresholds": "parity",
    "convert_model": "pipeline",
    "ConversionSettings": "settings",
    "ConversionResult": "record",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
