"""What `tuneloop demo` prints: lines that fit 80 columns, and the closing table (pure functions).

Every line is at most `WIDTH` characters and wrapped at spaces only, so a terminal, a log file or
`rich` (which wraps at 80 when not on a terminal) never breaks a figure across lines.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from typing import Any

WIDTH = 79


# A number and its unit ("192 ms", "4.2 points") stay on one line: glued while wrapping.
_UNIT = re.compile(r"(\d) (ms|s|points|rows|%)\b")
_GLUE = "\x00"


def wrap(text: str, indent: str = "", width: int = WIDTH, more: str = "  ") -> list[str]:
    """`text` in lines of at most `width` characters, continuation lines indented `more` further."""
    lines = textwrap.wrap(
        _UNIT.sub(rf"\1{_GLUE}\2", text),
        width=width,
        initial_indent=indent,
        subsequent_indent=indent + more,
        break_long_words=False,
        break_on_hyphens=False,
    ) or [indent]
    return [line.replace(_GLUE, " ") for line in lines]


def figure(value: Any, spec: str = ".3f") -> str:
    """A number as text, or '-' when there is none."""
    return "-" if value is None else format(value, spec)


def round_metrics(train: dict[str, Any]) -> dict[str, float | None]:
    """The round's headline figures: macro-F1 on the new eval split, the golden set and both."""
    metrics = train.get("metrics", {})

    def f1(name: str) -> float | None:
        value = metrics.get(name)
        return value.get("macro_f1") if isinstance(value, dict) else None

    return {
        "macro_f1": metrics.get("macro_f1"),
        "golden_macro_f1": f1("golden"),
        "union_macro_f1": f1("union"),
    }


# version (6) drop (9) macro-F1 (8) golden (6) outcome (11) and 2 spaces between: 46 characters,
# leaving the decision 33 characters a line; longer decisions continue under the decision column.
_COLUMNS = ("version", "drop", "macro-F1", "golden", "outcome")
_WIDTHS = (7, 9, 8, 6, 11)
_INDENT = sum(_WIDTHS) + 2 * len(_WIDTHS)


def _row(cells: Iterable[str]) -> str:
    parts = [
        c.rjust(w) if i in (2, 3) else c.ljust(w) for i, (c, w) in enumerate(zip(cells, _WIDTHS, strict=True))
    ]
    return "  ".join(parts) + "  "


def render_table(rounds: list[dict[str, Any]]) -> list[str]:
    """The closing table: one row per version, its decision wrapped under the last column."""
    lines = [_row(_COLUMNS) + "decision", "-" * WIDTH]
    for r in rounds:
        m = r["metrics"]
        cells = (
            f"v{r['version']}",
            r["drop"],
            figure(m.get("macro_f1")),
            figure(m.get("golden_macro_f1")),
            r["outcome"],
        )
        text = r.get("decision", "") + (f"; serves {r['serves']}" if r.get("serves") else "")
        decision = wrap(text, width=WIDTH - _INDENT, more="")
        lines.append(_row(cells) + decision[0])
        lines += [" " * _INDENT + more for more in decision[1:]]
    return [line.rstrip() for line in lines]


def students_line(compressed: dict[str, Any]) -> str:
    """One line per compress summary: each student passed or refused, with its worst figures."""
    if compressed.get("skipped"):
        return str(compressed["skipped"])
    parts = []
    for s in compressed["students"]:
        if s.get("skipped"):
            continue
        drop = max(f["teacher"] - f["student"] for f in s["macro_f1"].values()) * 100
        agreement = min(s["agreement"].values())
        verdict = "passed" if s["passed"] else f"refused ({s['reasons'][0]})"
        parts.append(
            f"{s['depth']}L {verdict}: macro-F1 drop {drop:.1f} pts against the teacher, agreement "
            f"{agreement:.3f}, {s['seconds']:.0f} s"
        )
    return "; ".join(parts) or "no student below the teacher's depth"


def serves_line(converted: dict[str, Any]) -> str:
    """What a conversion serves and its speed against the teacher's fp32, on a short text."""
    served = converted.get("served")
    if not served or not served.get("models"):  # no student weighed (or a pinned rebuild)
        choice = converted.get("int8_choice") or {}
        form = choice.get("serve", "fp32")
        ratio = choice.get("ratio_to_fp32") if form == "int8" else 1.0
        threads = choice.get("threads")
        if ratio is None or threads is None:
            return f"teacher {form}"
        return f"teacher {form}, p50 {ratio:.2f}x the teacher's fp32 ({_threads(threads)})"
    c = served["choice"]
    threads = c.get("threads")
    line = f"{served['serves']} {c.get('form', '')}".rstrip()
    if c.get("ratio_to_teacher_fp32") is not None:
        line += f", p50 {c['ratio_to_teacher_fp32']:.2f}x the teacher's fp32"
        if served["serves"] != "teacher" and c.get("ratio_to_teacher") is not None:
            line += f" and {c['ratio_to_teacher']:.2f}x the teacher as it would serve"
        line += f" ({_threads(threads)})"
    return line


def _threads(count: int | None) -> str:
    return f"short text, {count} thread{'' if count == 1 else 's'}"
