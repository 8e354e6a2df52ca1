"""What CPU a benchmark ran on: the figures are only comparable on the same kind of machine.

INT8 speed turns on the vector instructions: on x86 without VNNI the u8 x s8 kernels multiply with
`vpmaddubsw` (two products per 16-bit lane); VNNI (avx512_vnni, avx_vnni) accumulates in int32 in
one instruction. The machines these benchmarks run on vary by session (an EPYC of family 25 with
AVX2 only, and one of family 26 with AVX-512 VNNI, have both been seen), so every result records
the family, model and flags beside its figures.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

FLAG_PREFIXES = ("avx", "vnni", "amx", "fma", "f16c", "sse4_2")


def offline() -> None:
    """Models from local paths and packages only, tokenizers single-threaded (benchmarks' defaults)."""
    for key, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
    ):
        os.environ.setdefault(key, value)


def cpu_description() -> dict[str, Any]:
    """Model name, family/model numbers, the flags that decide INT8 speed, and usable cores."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in info:
                info[key] = value.strip()
            if key == "flags":
                break  # the first processor's block is enough
    except OSError:
        pass
    flags = sorted(f for f in info.get("flags", "").split() if f.startswith(FLAG_PREFIXES))
    return {
        "model": info.get("model name") or platform.processor() or platform.machine(),
        "family": info.get("cpu family"),
        "model_number": info.get("model"),
        "flags": flags,
        "vnni": any("vnni" in f for f in flags),
        "cores": len(os.sched_getaffinity(0)),
    }
