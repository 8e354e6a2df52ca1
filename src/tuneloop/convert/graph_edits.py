"""Small ONNX graph edits that make INT8 BERT both small and accurate.

Each was found by ablation on all-MiniLM-L6-v2 with a 77-way head (770 BANKING77 test texts,
argmax agreement of INT8 against fp32; see benchmarks/README.md):

* `quantize_word_embeddings`: the 30,522 x 384 word table is 47 MB of the 91 MB fp32 file, so the
  INT8 file cannot reach 0.3x without it. ORT's Q/DQ Gather uses one scale for the whole table:
  the largest entry is 1.05 while the median row's largest is 0.18, so a typical row gets about
  0.18 / (1.05 / 127) = 22 of the 127 levels (agreement 0.988 from the table alone). One scale
  per row gives every row all 127 levels. The lookup is rewritten as Gather(int8 rows) -> Cast ->
  Mul(Gather(row scales)), exact and cheap: only batch x sequence x 384 values are scaled per call,
  where a DequantizeLinear in front of the Gather would expand all 11.7 M entries on every call
  (ONNX Runtime does not constant-fold DequantizeLinear).
* `keep_float_side_paths` and `activation_matmuls`: which tensors get Q/DQ (see each docstring).
* `pick_outlier_channels` and `prepare_int8_matmul_inputs`: the few activation channels that would
  set a tensor's one int8 scale are multiplied in float beside the int8 MatMul, and what is left is
  scaled per token so that one static scale fits every token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

WORD_EMBEDDINGS = "word_embeddings"


def quantize_word_embeddings(model_path: Path) -> int:
    """Rewrite the word-embedding lookup in place as per-row symmetric int8; return rows quantised."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    target = next(
        (
            n
            for n in graph.node
            if n.op_type == "Gather" and WORD_EMBEDDINGS in n.input[0] and n.input[0] in inits
        ),
        None,
    )
    if target is None:
        return 0
    table_name, ids_name = target.input[0], target.input[1]
    table = numpy_helper.to_array(inits[table_name]).astype(np.float32)
    # Symmetric per row: scale = max|row| / 127, so each row spans the full int8 range.
    scale = np.abs(table).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    rows = np.clip(np.rint(table / scale[:, None]), -127, 127).astype(np.int8)
    graph.initializer.remove(inits[table_name])
    base = table_name.replace(".", "_")
    graph.initializer.extend(
        [
            numpy_helper.from_array(rows, f"{base}_int8"),
            numpy_helper.from_array(scale.astype(np.float32)[:, None], f"{base}_row_scale"),
        ]
    )
    out = target.output[0]
    position = list(graph.node).index(target)
    graph.node.remove(target)
    new_nodes = [
        helper.make_node("Gather", [f"{base}_int8", ids_name], [f"{base}_rows"], name=f"{base}_gather_int8"),
        helper.make_node("Cast", [f"{base}_rows"], [f"{base}_rows_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node(
            "Gather", [f"{base}_row_scale", ids_name], [f"{base}_scales"], name=f"{base}_gather_scale"
        ),
        helper.make_node("Mul", [f"{base}_rows_f", f"{base}_scales"], [out], name=f"{base}_dequant"),
    ]
    for offset, node in enumerate(new_nodes):
        graph.node.insert(position + offset, node)
    onnx.save(model, str(model_path))
    return int(rows.shape[0])


def keep_float_side_paths(model_path: Path, quantized_op_types: tuple[str, ...] = ("MatMul",)) -> int:
    """Give every non-quantised consumer of a Q->DQ'd activation the float tensor back.

    `quantize_static` rewires *all* consumers of a quantised activation to its DequantizeLinear
    output when only one quantised node reads it (`DedicatedQDQPair` applies from two). In BERT the
    LayerNorm output that feeds a MatMul also feeds the residual Add (and Shape ops), so the
    residual stream would be rounded to 8 bits per tensor at every layer; the CPU kernels only fuse
    DQ into the MatMul. Measured: agreement 0.884 -> 0.970 with everything else equal.
    Returns how many node inputs were rewired.
    """
    import onnx

    model = onnx.load(str(model_path))
    nodes = model.graph.node
    producer = {out: node for node in nodes for out in node.output}
    restore: dict[str, str] = {}
    for dq in nodes:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            restore[dq.output[0]] = q.input[0]
    rewired = 0
    for node in nodes:
        if node.op_type in quantized_op_types or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in restore:
                node.input[i] = restore[name]
                rewired += 1
    if rewired:
        onnx.save(model, str(model_path))
    return rewired


def activation_matmuls(model_path: Path) -> list[str]:
    """MatMuls whose second input is not a weight (attention's Q.K^T and P.V).

    ORT's Q/DQ quantiser ignores `MatMulConstBOnly` (only its QOperator path reads it), so these
    are excluded by name: quantising them rounds softmax probabilities to one 8-bit scale.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    produced_by_constant = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] not in weights | produced_by_constant
    ]


def weight_matmul_inputs(model_path: Path) -> dict[str, list[str]]:
    """Activation tensor -> names of the MatMuls that multiply it by a constant weight."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            readers.setdefault(node.input[0], []).append(node.name)
    return readers


def pick_outlier_channels(channel_max: np.ndarray, ratio: float, max_channels: int) -> list[int]:
    """Channels whose calibrated peak |x| exceeds `ratio` x the median channel's peak.

    At most `max_channels`, largest first. On a LoRA-tuned MiniLM, (2.5, 16) picks 149 channels
    over the 24 distinct weight-MatMul inputs, and (4, 8) picks 32; the INT8 model with 149 took
    16.0 ms against 15.5 ms (batch 1, 128 tokens; the quantize.py constants give the trade-off).
    """
    peaks = np.asarray(channel_max, dtype=np.float64)
    limit = ratio * float(np.median(peaks))
    order = np.argsort(peaks)[::-1][:max_channels]
    return [int(j) for j in order if peaks[j] > limit]


def prepare_int8_matmul_inputs(
    model_path: Path,
    outliers: Mapping[str, Sequence[int]],
    per_token: bool | Callable[[str], bool] = True,
) -> list[str]:
    """Rewrite in place so each int8 MatMul sees a well-scaled input; return the float side MatMuls.

    Every constant-weight MatMul X @ W (X: [..., tokens, K]) becomes

        r * ((X * mask / r) @ W)  +  X[..., O] @ W[O, :]
        O: X's outlier channels (`outliers[X]`), mask: 0 on O and 1 elsewhere
        r: per token, max |X * mask| over the channels (1 when `per_token` is False, or when
           `per_token(X)` is False for a predicate: scaling only some inputs)

    which is the same product in float (the tests check 1e-5). Only the middle MatMul is
    quantised. Its input lies in [-1, 1] for every token, so one static scale fits all of them:
    per-token dynamic quantisation written with static Q/DQ, which ORT still fuses into one int8
    GEMM (MatMulIntegerToFloat); `r` costs a ReduceMax and two elementwise ops per input.

    Why both, measured on all-MiniLM-L6-v2 (LoRA-tuned on BANKING77, 3,080 test texts):
    * Outliers: channel 99 of layer 0's FFN input peaks at 28.4 while the median channel peaks at
      1.9. One scale over +-28.4 gives a typical channel about 255 x 1.9 / 56.8 = 8 levels; with 3
      channels moved to the float side path (|O| <= 8 rows, excluded from quantisation by the names
      returned) the range is about +-7.5, 4x finer. Agreement 0.982 -> 0.990.
    * Per token: [CLS] carries the tensor's range in its outlier channels and little elsewhere
      (after the split its values peak at 0.36 in a +-6.8 tensor: under 14 levels), and other
      tokens vary by 2x in range. Mean |logit diff| 0.071 -> 0.039. Without the split, per-token
      scaling alone reached only 0.066: each token's own maximum is then its outlier channel.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    wanted = {name: [int(c) for c in chans] for name, chans in outliers.items() if len(chans)}
    scaled = per_token if callable(per_token) else (lambda _name: bool(per_token))
    if per_token:
        graph.initializer.append(
            numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "int8_token_floor")
        )
    side_matmuls: list[str] = []
    prepared: dict[str, tuple[str, str | None, str | None]] = {}  # X -> (int8 input, outliers, r)
    out_nodes = []
    for node in graph.node:
        x = node.input[0] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if x is None or node.input[1] not in inits or not (scaled(x) or x in wanted):
            out_nodes.append(node)
            continue
        chans = wanted.get(x, [])
        base = x.strip("/").replace("/", "_")
        weight = numpy_helper.to_array(inits[node.input[1]])
        if x not in prepared:
            current, outlier_values, scale = x, None, None
            if chans:
                mask = np.ones(weight.shape[0], dtype=np.float32)
                mask[chans] = 0.0
                graph.initializer.extend(
                    [
                        numpy_helper.from_array(mask, f"{base}_inlier_mask"),
                        numpy_helper.from_array(np.asarray(chans, dtype=np.int64), f"{base}_outlier_index"),
                    ]
                )
                outlier_values = f"{base}_outliers"
                out_nodes += [
                    helper.make_node(
                        "Mul", [x, f"{base}_inlier_mask"], [f"{base}_inliers"], name=f"{base}_inliers"
                    ),
                    helper.make_node(
                        "Gather", [x, f"{base}_outlier_index"], [outlier_values], axis=-1, name=outlier_values
                    ),
                ]
                current = f"{base}_inliers"
            if scaled(x):
                scale = f"{base}_token_max"
                out_nodes += [
                    helper.make_node("Abs", [current], [f"{base}_abs"], name=f"{base}_abs"),
                    helper.make_node(
                        "ReduceMax",
                        [f"{base}_abs"],
                        [f"{base}_peak"],
                        axes=[-1],
                        keepdims=1,
                        name=f"{base}_peak",
                    ),
                    # A row of zeros (padding, a masked-out token) divides by the floor, not by 0.
                    helper.make_node("Max", [f"{base}_peak", "int8_token_floor"], [scale], name=scale),
                    helper.make_node(
                        "Div", [current, scale], [f"{base}_per_token"], name=f"{base}_per_token"
                    ),
                ]
                current = f"{base}_per_token"
            prepared[x] = (current, outlier_values, scale)
        current, outlier_values, scale = prepared[x]
        y = node.output[0]
        # Each step writes `y` itself when it is the last one, so the graph gains no Identity nodes.
        main = y if scale is None and outlier_values is None else f"{y}_int8"
        node.input[0], node.output[0] = current, main
        out_nodes.append(node)
        if scale is not None:
            rescaled = y if outlier_values is None else f"{y}_rescaled"
            out_nodes.append(helper.make_node("Mul", [main, scale], [rescaled], name=f"{node.name}_rescale"))
            main = rescaled
        if outlier_values is None:
            continue
        rows = f"{node.input[1]}_outlier_rows"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight[chans, :]), rows))
        side = f"{node.name}_outliers"
        side_matmuls.append(side)
        out_nodes += [
            helper.make_node("MatMul", [outlier_values, rows], [f"{y}_outliers"], name=side),
            helper.make_node("Add", [main, f"{y}_outliers"], [y], name=f"{node.name}_add_outliers"),
        ]
    del graph.node[:]
    graph.node.extend(out_nodes)
    onnx.save(model, str(model_path))
    return side_matmuls
