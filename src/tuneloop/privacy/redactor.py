"""The one redaction function: a text in, the text with typed placeholders and what was found out.

The recognizers (recognizers.py: Presidio's classes and checksums, and the project's) run on the
text; overlapping findings are settled (`most_certain`: one per stretch of text) and each is
replaced by its placeholder (`<CREDIT_CARD>`, `<EMAIL>`, ...). Presidio's AnalyzerEngine and
AnonymizerEngine did the same at about twice the cost: per text that holds a digit, ~50 µs of
orchestration (an empty spaCy Doc from NoOpNlpEngine, the registry lookup, the context enhancer,
which without an NLP model only copies results) and ~60 µs to splice placeholders into a string
(profiled on Faker texts, 2026-12-06), while the ingest target allows a row about 45 µs more than
no redaction (benchmarks/pii.py). No NLP model is loaded or downloaded: recognizers are called with
no NLP artifacts, so a named-entity recognizer (the `ner_recognizers` hook) must bring its own model.

Cost: every entity the recognizers look for holds a digit or an '@' (cards, IBANs, phones, IPs,
wallets, order and account numbers: digits; e-mail: '@'), so a text with neither is returned as it
is without calling Presidio; on BANKING77 that is most texts (benchmarks/pii.py measures both). A
configured named-entity model turns this shortcut off: names hold no digits.

A placeholder already in a text (a row the service redacted before landing it, an operator's
redacted export) counts as found, so a row the policy quarantines is quarantined whichever door
redacted it first.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneloop.privacy.recognizers import build_recognizers
from tuneloop.privacy.rules import PrivacyRules

_MAY_HOLD = re.compile(r"[0-9@]")


@dataclass(frozen=True)
class Redacted:
    """A text as it may be kept, and entity -> how many it held (counts only, never the values).

    `found` counts the values replaced now; `placeholders` the ones the text already held redacted.
    """

    text: str
    found: dict[str, int] = field(default_factory=dict)
    placeholders: dict[str, int] = field(default_factory=dict)

    @property
    def held(self) -> dict[str, int]:
        """Both: what the text held, redacted here or before."""
        if not self.placeholders:  # the common case, on every row of an ingest: no Counter
            return self.found
        if not self.found:
            return self.placeholders
        return dict(Counter(self.found) + Counter(self.placeholders))


def most_certain(results: list[Any]) -> list[Any]:
    """One finding per stretch of text: the highest score wins an overlap (then the longer span).

    Presidio's anonymizer would keep the part of a weaker finding that sticks out of a stronger
    one: a phone match reaching from an IBAN's last group into "10 pounds" became "<IBAN><PHONE>",
    the amount gone. The loser is dropped whole; a second pass sees what is left.
    """
    kept: list[Any] = []
    for result in sorted(results, key=lambda r: (-r.score, r.start - r.end, r.start)):
        if all(result.end <= k.start or k.end <= result.start for k in kept):
            kept.append(result)
    return sorted(kept, key=lambda r: r.start)


class Redactor:
    """Find and replace personal data under `rules`; safe to share between threads."""

    def __init__(self, rules: PrivacyRules) -> None:
        self.rules = rules
        self._recognizers = [(r, list(r.supported_entities)) for r in build_recognizers(rules)]
        self._before_phones = [(r, e) for r, e in self._recognizers if e != ["PHONE_NUMBER"]]
        self._placeholders = {entity: rules.placeholder(entity) for entity in rules.entities}
        self._shortcut = not rules.ner_recognizers
        self._by_placeholder = {p: entity for entity, p in self._placeholders.items()}
        # None without entities: an empty alternation would match "" everywhere.
        self._placeholder_re = (
            re.compile("|".join(re.escape(p) for p in sorted(self._by_placeholder)))
            if self._by_placeholder
            else None
        )
        self._lock = threading.Lock()  # recognizers keep no per-call state; the label cache does
        self._label_cache: dict[str, Redacted] = {}

    def may_hold(self, text: str) -> bool:
        """Whether `text` needs the recognizers at all (see the module docstring)."""
        if not self._placeholders:
            return False
        return not self._shortcut or _MAY_HOLD.search(text) is not None

    def redact(self, text: str) -> Redacted:
        pattern = self._placeholder_re
        placeholders: Counter[str] = Counter()
        if pattern is not None and "<" in text:
            placeholders.update(self._by_placeholder[m] for m in pattern.findall(text))
        found: Counter[str] = Counter()
        # First every recognizer but the phone one, then all of them on what is left, again while a
        # pass finds something (3 passes at most). phonenumbers' matcher is the dear one (~60 µs a
        # region that it tries) and reads the digits of a card or an IBAN as a phone-like run that
        # no region takes (all 11 tried), and a phone number written right before a card number as
        # one long number: with the checksummed entities replaced first it sees neither.
        stages = [self._before_phones, self._recognizers, self._recognizers, self._recognizers]
        for recognizers in stages:
            if not self.may_hold(text):
                break
            results = most_certain(
                [
                    result
                    for recognizer, entities in recognizers
                    for result in recognizer.analyze(text, entities, None)
                    if result.score >= self.rules.min_score and result.entity_type in self._placeholders
                ]
            )
            if not results:
                if recognizers is self._before_phones:
                    continue
                break
            for result in reversed(results):  # from the end, so earlier offsets stay right
                text = text[: result.start] + self._placeholders[result.entity_type] + text[result.end :]
                found[result.entity_type] += 1
        return Redacted(text, dict(found), dict(placeholders))

    def redact_label(self, label: str) -> Redacted:
        """`redact` for labels, remembered: a batch holds few distinct labels and many rows of each."""
        hit = self._label_cache.get(label)
        if hit is None:
            hit = self.redact(label)
            with self._lock:
                if len(self._label_cache) < 10_000:
                    self._label_cache[label] = hit
        return hit

    def redact_bytes(self, content: bytes) -> tuple[bytes, dict[str, int]]:
        """A file's bytes with every line redacted, and what they held; bytes that are not UTF-8
        pass through unchanged."""
        found: Counter[str] = Counter()
        lines = []
        for line in content.decode("utf-8", "surrogateescape").splitlines(keepends=True):
            done = self.redact(line)
            found.update(done.held)
            lines.append(done.text)
        return "".join(lines).encode("utf-8", "surrogateescape"), dict(found)

    def quarantine_reason(self, found: dict[str, int]) -> str | None:
        """Why a row holding `found` is quarantined under the policy, or None when it is kept."""
        held = sorted(e for e in found if e in self.rules.quarantined)
        if not held:
            return None
        return f"holds {', '.join(held)}, which the privacy policy quarantines (stored redacted)"
