"""The recognizers: Presidio's pattern recognizers with checksums, and two a support desk needs.

Presidio's own (each validates what its pattern matched, so a random 16-digit number is not a card):
- CREDIT_CARD: 12-19 digits in the usual groupings, Luhn checksum;
- IBAN_CODE: country code, check digits and the country's length, mod-97 checksum;
- EMAIL_ADDRESS: a pattern, then a public suffix check (tldextract, read offline: see below);
- PHONE_NUMBER: `phonenumbers`' matcher, valid numbers of the configured regions only;
- IP_ADDRESS (v4 and v6) and CRYPTO (Bitcoin addresses, base58 or bech32 checksum).
The project's: ORDER_NUMBER and ACCOUNT_NUMBER, an identifier right after the words that name it
("order #A1234567", "account number 12345678"). Presidio's context words need an NLP model to
find words near a match, and none is loaded (NoOpNlpEngine), so the context is in the pattern: a
variable-length look-behind (the `regex` module Presidio matches with), so only the number itself
is replaced and the words stay for the model.
"""

from __future__ import annotations

import importlib
from typing import Any

from tuneloop.privacy.rules import PrivacyRules

# "order", optionally "number"/"no"/"#"/"id"/"ref", optionally "is" or ":", then the identifier:
# 5 to 20 letters, digits and dashes holding at least 4 digits (so "order status" is left alone).
_ORDER = (
    r"(?i)(?<=\border\s{0,2}(?:number|num|no\.?|id|ref(?:erence)?)?\s{0,2}(?:is\s)?\s{0,2}[:#]?\s{0,2})"
    r"(?=[A-Z0-9-]{0,16}\d[A-Z0-9-]{0,16}\d[A-Z0-9-]{0,16}\d[A-Z0-9-]{0,16}\d)[A-Z0-9][A-Z0-9-]{4,19}\b"
)
# "account", "acct" or "a/c", optionally "number"/"no"/"#", then 6 to 17 digits, spaces or dashes
# allowed between groups (a UK sort code and account, a US routing-less account number).
_ACCOUNT = (
    r"(?i)(?<=\b(?:account|acct|a/c)\s{0,2}(?:number|num|no\.?|#)?\s{0,2}(?:is\s)?\s{0,2}[:#]?\s{0,2})"
    r"\d(?:[ -]?\d){5,16}\b"
)


def _offline_email_recognizer() -> Any:
    """Presidio's e-mail recognizer with tldextract reading its bundled suffix list only.

    The stock one calls `tldextract.extract`, which fetches the public suffix list over the network
    on first use (and caches it under the home folder): no network at run time here.
    """
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return bool(extract(pattern_text).fqdn)

    return OfflineEmailRecognizer()


def build_recognizers(rules: PrivacyRules) -> list[Any]:
    """One recognizer per entity the rules name (and the NER hook's), English, no NLP model."""
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    makers: dict[str, Any] = {
        "CREDIT_CARD": CreditCardRecognizer,
        "IBAN_CODE": IbanRecognizer,
        "EMAIL_ADDRESS": _offline_email_recognizer,
        "PHONE_NUMBER": lambda: PhoneRecognizer(supported_regions=rules.phone_regions),
        "IP_ADDRESS": IpRecognizer,
        "CRYPTO": CryptoRecognizer,
        "ORDER_NUMBER": lambda: PatternRecognizer(
            supported_entity="ORDER_NUMBER", patterns=[Pattern("order number", _ORDER, 0.6)]
        ),
        "ACCOUNT_NUMBER": lambda: PatternRecognizer(
            supported_entity="ACCOUNT_NUMBER", patterns=[Pattern("account number", _ACCOUNT, 0.6)]
        ),
    }
    recognizers = [makers[entity]() for entity in rules.entities if entity in makers]
    for dotted in rules.ner_recognizers:
        module, _, name = dotted.partition(":")
        if not name:
            raise ValueError(f"ner_recognizers: {dotted!r} is not 'package.module:Class'")
        recognizers.append(getattr(importlib.import_module(module), name)())
    return recognizers
