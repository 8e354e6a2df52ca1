"""What a request may hold: pure checks that return the message a caller needs to fix it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Bounds on one /classify request (ServeSettings fills them)."""

    max_texts: int
    max_chars: int
    max_key_chars: int


def classify_problem(texts: Sequence[str], key: str | None, limits: Limits) -> str | None:
    """Why a /classify body cannot be served, or None when it can."""
    if not texts:
        return 'texts is empty: send at least one text, e.g. {"texts": ["my card was declined"]}'
    if len(texts) > limits.max_texts:
        return f"texts holds {len(texts)} items; send at most {limits.max_texts} per request"
    for i, text in enumerate(texts):
        if not text.strip():
            return f"texts[{i}] is empty or only whitespace: send the text to classify"
        if len(text) > limits.max_chars:
            return f"texts[{i}] has {len(text)} characters; the limit is {limits.max_chars}"
    if key is not None and not 1 <= len(key) <= limits.max_key_chars:
        return f"key must have 1 to {limits.max_key_chars} characters (it has {len(key)})"
    return None


def feedback_problem(label: str, text: str | None, label_pattern: str, max_chars: int) -> str | None:
    """Why a /feedback body cannot be taken, or None (labels follow the ingest label rules)."""
    if not re.fullmatch(label_pattern, label):
        return f"label {label!r} does not match the label pattern {label_pattern}"
    if text is not None and not text.strip():
        return "text is empty: leave it out, or send the text the label belongs to"
    if text is not None and len(text) > max_chars:
        return f"text has {len(text)} characters; the limit is {max_chars}"
    return None
