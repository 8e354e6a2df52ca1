"""What a request may hold: pure checks that return the message a caller needs to fix it.

Text must be encodable as UTF-8. JSON may carry a lone surrogate (`"\\ud800"`), which Python's
json module decodes into a str that no encoder takes: the tokenizer, the routing hash and the
request-id digest would all raise on it, a 5xx for the whole batch. BentoML's parser (pydantic's)
refuses such a body already (400 "Invalid JSON: unexpected end of hex escape"); these checks keep
the handlers safe whatever parsed the body, as the caller's 400.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


def _not_text(value: str) -> str | None:
    """Where `value` stops being encodable text (a lone surrogate), or None when it is text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = value[exc.start]
        return f"holds a lone surrogate (U+{ord(bad):04X}) at character {exc.start}, which is not text"
    return None


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
        odd = _not_text(text)
        if odd:
            return f"texts[{i}] {odd}: send valid UTF-8 text"
    if key is not None and not 1 <= len(key) <= limits.max_key_chars:
        return f"key must have 1 to {limits.max_key_chars} characters (it has {len(key)})"
    odd = _not_text(key) if key is not None else None
    if odd:
        return f"key {odd}: send valid UTF-8 text"
    return None


def feedback_problem(label: str, text: str | None, label_pattern: str, max_chars: int) -> str | None:
    """Why a /feedback body cannot be taken, or None (labels follow the ingest label rules)."""
    if not re.fullmatch(label_pattern, label):
        # The label is not echoed: a caller's error may hold what they typed (a card number).
        return f"label does not match the label pattern {label_pattern}"
    if text is not None and not text.strip():
        return "text is empty: leave it out, or send the text the label belongs to"
    if text is not None and len(text) > max_chars:
        return f"text has {len(text)} characters; the limit is {max_chars}"
    odd = _not_text(text) if text is not None else None
    if odd:
        return f"text {odd}: send the text exactly as it was classified"
    return None
