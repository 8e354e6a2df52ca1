"""Time ONNX models side by side on this host: the measured half of choosing an INT8 variant.

Every model is timed in the same run, at each thread count, on two shapes: batch 1 with a typical
serving text at its own length ("short") and batch 1 padded to the maximum length ("long").
The runs alternate: each model gets a block of consecutive calls (after WARMUP_CALLS untimed
ones), and the order of the models reverses every round (A B C, C B A, ...), so drift and a
neighbour's load land on all of them alike and the *ratios* hold even when absolute times drift.

Why blocks of 20 and not a few calls each: a served session runs request after request, and with
2 intra-op threads short blocks time the switch between sessions more than the session. On the
2-core EPYC (family 26), 2 threads, 128 tokens, 5 sessions: the earlier protocol (commit 90cc733:
blocks of 4, rotated, 5 ms pause) gave static_lean 8.55 ms against fp32 10.20 (0.84x); blocks
of 4 without the pause (`benchmarks/convert.py --quick --block 4`) gave static_lean 5.24 but
static and static_merged 9.4 ms (1.15x fp32, slower than at 1 thread); blocks of 20, lean 5.48
against 8.55 (0.64x). The likely cause, not measured apart: the previous session's worker
threads still spinning, or an idle vCPU being woken, during the first calls after a switch.
At 1 thread the protocols agree (lean 8.5-9.1 ms).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.choice import timing_key
from tuneloop.convert.runtime import encode

BLOCK_CALLS = 20
WARMUP_CALLS = 3


def time_interleaved(
    runners: Mapping[str, Callable[[], Any]], calls: int, block: int | None = None
) -> dict[str, float]:
    """Median ms per call of each runner over `calls` timed calls, in blocks of up to `block`
    consecutive calls, the runners' order reversed every round."""
    if calls < 1:
        raise ValueError("timing needs at least one call per model")
    block = block or BLOCK_CALLS  # read at call time: benchmarks/convert.py --block sets it
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = -(-calls // block)  # ceil
    per_round = -(-calls // rounds)  # equal blocks: 24 calls are 2 x 12, not 20 + 4
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            run = runners[name]
            for _ in range(WARMUP_CALLS):
                run()
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * float(np.median(values)) for name, values in times.items()}


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_models(
    paths: Mapping[str, Path],
    tokenizer: Any,
    short_text: str,
    long_tokens: int,
    threads: Sequence[int],
    calls: int,
) -> dict[str, dict[str, float]]:
    """{model: {timing_key(shape, threads): median ms}} for every model, shape and thread count.

    `short_text` is encoded at its own length; the long input is the same text padded to
    `long_tokens` (the mask marks the padding, as serving a padded batch would).
    """
    shapes = {
        "short": encode(tokenizer, [short_text], long_tokens),
        "long": encode(tokenizer, [short_text], long_tokens, pad_to=long_tokens),
    }
    figures: dict[str, dict[str, float]] = {name: {} for name in paths}
    for count in threads:
        sessions = {name: _session(path, count) for name, path in paths.items()}
        wanted = {name: {i.name for i in s.get_inputs()} for name, s in sessions.items()}
        for shape, batch in shapes.items():
            runners = {
                name: _runner(session, {k: v for k, v in batch.items() if k in wanted[name]})
                for name, session in sessions.items()
            }
            for name, ms in time_interleaved(runners, calls).items():
                figures[name][timing_key(shape, count)] = ms
    return figures


def _runner(session: Any, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
    return lambda: session.run(None, feeds)


def typical_text(tokenizer: Any, texts: Sequence[str], max_length: int) -> str:
    """The text of median token length (first such in order): the shape serving sees most."""
    if not texts:
        raise ValueError("no texts to pick a typical serving text from")
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    target = sorted(lengths)[len(lengths) // 2]
    return texts[lengths.index(target)]
