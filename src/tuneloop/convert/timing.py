"""Time ONNX models side by side on this host: the measured half of choosing an INT8 variant.

Every model is timed in the same run, at each thread count, on two shapes: batch 1 with a typical
serving text at its own length ("short") and batch 1 padded to the maximum length ("long").
The runs are interleaved: small blocks of calls rotate over the models, so a neighbour's load on a
shared machine lands on all of them alike and the *ratios* hold even when absolute times drift.
Each block starts with one untimed call (caches, and the previous model's thread pool going idle),
and a short pause between blocks lets ONNX Runtime's spinning worker threads park; timed back to
back, one session's spinning pool slows the next session's call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.choice import timing_key
from tuneloop.convert.runtime import encode

BLOCK_CALLS = 4
PAUSE_S = 0.005


def time_interleaved(
    runners: Mapping[str, Callable[[], Any]], calls: int, block: int = BLOCK_CALLS
) -> dict[str, float]:
    """Median ms per call of each runner over `calls` timed calls, in rotating blocks of `block`."""
    if calls < 1:
        raise ValueError("timing needs at least one call per model")
    names = list(runners)
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = -(-calls // block)  # ceil: every runner gets at least `calls` timed calls
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            run = runners[name]
            run()  # untimed
            for _ in range(block):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
            time.sleep(PAUSE_S)
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
