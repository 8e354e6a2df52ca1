"""The one redaction function: a text in, the text with typed placeholders and what was found out.

Presidio's AnalyzerEngine runs the pattern recognizers (recognizers.py) with `NoOpNlpEngine`, so no
spaCy model is loaded or downloaded; its AnonymizerEngine replaces each finding with its placeholder
(`<CREDIT_CARD>`, `<EMAIL>`, ...) and settles overlapping findings (one kept per span).

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


def _no_context() -> Any:
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer

    class NoContext(ContextAwareEnhancer):
        """Context words need tokens and lemmas from an NLP model; with none loaded Presidio's
        enhancer only deep-copies every result (~100 µs a text). The project's recognizers carry
        their context in the pattern (recognizers.py)."""

        def __init__(self) -> None:
            super().__init__(0, 0, 0, 0)

        def enhance_using_context(
            self, text: str, raw_results: list[Any], *args: Any, **kwargs: Any
        ) -> list[Any]:
            return raw_results

    return NoContext()


class Redactor:
    """Find and replace personal data under `rules`; safe to share between threads."""

    def __init__(self, rules: PrivacyRules) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_analyzer.nlp_engine.no_op_nlp_engine import NoOpNlpEngine
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig

        self.rules = rules
        nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        nlp.load()
        registry = RecognizerRegistry(supported_languages=["en"])
        for recognizer in build_recognizers(rules):
            registry.add_recognizer(recognizer)
        self._analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=nlp,
            supported_languages=["en"],
            context_aware_enhancer=_no_context(),
        )
        self._anonymizer = AnonymizerEngine()
        self._operators = {
            entity: OperatorConfig("replace", {"new_value": rules.placeholder(entity)})
            for entity in rules.entities
        }
        self._entities = list(rules.entities)
        self._shortcut = not rules.ner_recognizers
        by_placeholder = {rules.placeholder(e): e for e in rules.entities}
        self._by_placeholder = by_placeholder
        # None without entities: an empty alternation would match "" everywhere.
        self._placeholder_re = (
            re.compile("|".join(re.escape(p) for p in sorted(by_placeholder))) if by_placeholder else None
        )
        self._lock = threading.Lock()  # Presidio's engines keep no per-call state; the cache does
        self._label_cache: dict[str, Redacted] = {}

    def may_hold(self, text: str) -> bool:
        """Whether `text` needs Presidio at all (see the module docstring)."""
        if not self._entities:
            return False
        return not self._shortcut or _MAY_HOLD.search(text) is not None

    def redact(self, text: str) -> Redacted:
        pattern = self._placeholder_re
        placeholders: Counter[str] = Counter()
        if pattern is not None and "<" in text:
            placeholders.update(self._by_placeholder[m] for m in pattern.findall(text))
        found: Counter[str] = Counter()
        # Again on the result while a pass finds something (3 passes at most): phonenumbers' matcher
        # reads a phone number written right before a card number as one long number, and finds
        # it only once the card is a placeholder.
        for _ in range(3):
            if not self.may_hold(text):
                break
            results = self._analyzer.analyze(
                text, language="en", entities=self._entities, score_threshold=self.rules.min_score
            )
            results = most_certain(results)
            if not results:
                break
            # The analyzer's results are what the anonymizer takes (Presidio's documented use);
            # the two packages declare the class separately, hence the ignore.
            out = self._anonymizer.anonymize(text, results, operators=self._operators)  # type: ignore[arg-type]
            text = out.text
            found.update(item.entity_type for item in out.items)
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
