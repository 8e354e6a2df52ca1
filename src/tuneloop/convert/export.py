"""Export a merged transformers classifier folder to an fp32 ONNX graph.

Exporter choice, measured on all-MiniLM-L6-v2 with a 77-way head (torch 2.13, transformers 5.23,
onnxruntime 1.32), by what `onnxruntime.transformers.optimizer` could fuse afterwards:

    exporter            attention impl   opset   fused by ORT's BERT optimizer            nodes
    TorchScript         eager            17      EmbedLayerNorm 1, Attention 6,            50
                                                 BiasGelu 6, SkipLayerNorm 12
    dynamo              eager            18      BiasGelu 6, SkipLayerNorm 12, LN 1       187
    TorchScript         sdpa (default)   17      BiasGelu 6, SkipLayerNorm 12, LN 1       312

Only the TorchScript exporter (`dynamo=False`) over the *eager* attention path yields the
MatMul/Div/Add/Softmax/MatMul pattern and the mask sub-graph the fusion scripts match; the sdpa path
and the dynamo exporter leave attention as ~40 loose ops per layer. Opset 17 is the newest the
optimizer's patterns are written against and the first with a LayerNormalization op.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

from tuneloop.convert.files import atomic_output

# torch.onnx.export keeps its state in module globals (GLOBALS.in_onnx_export), so two exports at
# once in one process (two projects' conversions in threads) fail the second: one at a time.
_EXPORTING = threading.Lock()
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 17


def export_onnx(model_dir: Path, out_path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export `model_dir` (a merged `AutoModelForSequenceClassification` folder) to fp32 ONNX.

    Inputs `input_ids`, `attention_mask`, `token_type_ids` (int64, [batch, sequence]) and output
    `logits` ([batch, num_labels]) have dynamic batch and sequence axes. Written atomically.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, attn_implementation="eager").eval()
    # The trace needs one real example: batch 2 x length 8 (neither axis 1, so neither is
    # specialised) with the second row padded, so the mask path is traced with zeros in it.
    input_ids = torch.full((2, 8), 100, dtype=torch.int64)
    attention_mask = torch.ones(2, 8, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    example = (input_ids, attention_mask, torch.zeros(2, 8, dtype=torch.int64))
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    dynamic_axes[OUTPUT_NAME] = {0: "batch"}
    with atomic_output(Path(out_path)) as tmp, warnings.catch_warnings():
        # The tracer warns about Python control flow on shapes inside transformers; the dynamic-axis
        # tests (batch 1 and 5, different lengths) are what shows the graph is general.
        warnings.simplefilter("ignore")
        with torch.no_grad(), _EXPORTING:
            torch.onnx.export(
                model,
                example,
                str(tmp),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    return Path(out_path)
