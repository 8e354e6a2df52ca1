"""What the redactor looks for and what a row holding it becomes: plain data, from the policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Action = Literal["redact", "quarantine"]

# Entity -> the placeholder that replaces it. Presidio's names for its recognizers, the project's
# for order and account numbers. A placeholder is what the model sees in training and at serving.
PLACEHOLDERS: dict[str, str] = {
    "CREDIT_CARD": "<CREDIT_CARD>",
    "IBAN_CODE": "<IBAN>",
    "EMAIL_ADDRESS": "<EMAIL>",
    "PHONE_NUMBER": "<PHONE>",
    "IP_ADDRESS": "<IP_ADDRESS>",
    "CRYPTO": "<CRYPTO_WALLET>",
    "ORDER_NUMBER": "<ORDER_NUMBER>",
    "ACCOUNT_NUMBER": "<ACCOUNT_NUMBER>",
}

# Entities only a named-entity model finds (no package here ships one, see `ner_recognizers`).
NER_ENTITIES = ("PERSON", "LOCATION", "NRP")


@dataclass(frozen=True)
class PrivacyRules:
    """Which entities to find, and whether a row holding one is redacted or quarantined (redacted)."""

    entities: dict[str, Action] = field(default_factory=lambda: dict.fromkeys(PLACEHOLDERS, "redact"))
    # Presidio's scores: 1.0 for a checksum-validated card or IBAN, 0.4 for a phone number that
    # `phonenumbers` parses as valid in one of `phone_regions`; lower matches are left alone.
    min_score: float = 0.4
    phone_regions: tuple[str, ...] = ("US", "GB", "IE", "DE", "FR", "ES", "IT", "NL", "IN", "CA", "AU")
    # The hook for a named-entity model ("package.module:Class", each a Presidio EntityRecognizer
    # built with no arguments). Without one, names and addresses are not found: none is claimed.
    ner_recognizers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.entities) - set(PLACEHOLDERS) - set(NER_ENTITIES))
        if unknown:
            raise ValueError(f"unknown entities {unknown}; known: {sorted(PLACEHOLDERS)}")
        ner = sorted(set(self.entities) & set(NER_ENTITIES))
        if ner and not self.ner_recognizers:
            raise ValueError(
                f"{ner} need a named-entity model, and none is configured (ner_recognizers): "
                "no package here ships one, so they would silently never be found"
            )
        bad = {e: a for e, a in self.entities.items() if a not in ("redact", "quarantine")}
        if bad:
            raise ValueError(f"actions must be redact or quarantine, got {bad}")

    def placeholder(self, entity: str) -> str:
        return PLACEHOLDERS.get(entity, f"<{entity}>")

    @property
    def quarantined(self) -> frozenset[str]:
        return frozenset(e for e, a in self.entities.items() if a == "quarantine")
