"""Fuse a BERT ONNX graph with onnxruntime's transformer optimizer.

On all-MiniLM-L6-v2 (6 layers) exported by `export_onnx`, the optimizer turns 674 nodes into 50:
1 EmbedLayerNormalization (word + position + token-type lookups and the first LayerNorm),
6 Attention (one per layer: QKV projection, scaled dot product, mask, softmax), 6 BiasGelu and
12 SkipLayerNormalization (two residual + LayerNorm per layer). The benchmark measures the speedup.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuneloop.convert.files import atomic_output

# The fusions we report, always present in the result (0 when absent) so a regression shows as a 0.
REPORTED_FUSIONS = (
    "EmbedLayerNormalization",
    "Attention",
    "MultiHeadAttention",
    "LayerNormalization",
    "SkipLayerNormalization",
    "Gelu",
    "FastGelu",
    "BiasGelu",
)


def read_bert_shape(model_dir: Path) -> tuple[int, int]:
    """(num_attention_heads, hidden_size) from a transformers `config.json`."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config["num_attention_heads"]), int(config["hidden_size"])


def optimize_onnx(onnx_path: Path, out_path: Path, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Write the fused fp32 graph of `onnx_path` to `out_path`; return fusion counts by op type.

    `opt_level=0` applies only the Python fusion scripts: ONNX Runtime applies its own graph
    optimisations again when a session loads the file, so baking them in here gains nothing and
    would tie the file to the CPU provider.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(
        str(onnx_path),
        model_type="bert",
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,
    )
    stats = optimized.get_fused_operator_statistics()
    counts = {name: int(stats.get(name, 0)) for name in REPORTED_FUSIONS}
    counts.update({name: int(n) for name, n in stats.items() if n and name not in counts})
    with atomic_output(Path(out_path)) as tmp:
        optimized.save_model_to_file(str(tmp))
    return counts
