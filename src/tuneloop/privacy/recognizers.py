"""The recognizers: Presidio's pattern recognizers with checksums, and two a support desk needs.

Presidio's own (each validates what its pattern matched, so a random 16-digit number is not a card):
- CREDIT_CARD: Presidio's Luhn check, on a wider pattern than its own (below);
- IBAN_CODE: country code, check digits and the country's length, mod-97 checksum;
- EMAIL_ADDRESS: a pattern, then a public suffix check (tldextract, read offline: see below);
- PHONE_NUMBER: `phonenumbers`' matcher over the configured regions, made less strict (below);
- IP_ADDRESS (v4 and v6) and CRYPTO (Bitcoin addresses, base58 or bech32 checksum).

Two of Presidio's defaults missed too much of what people type (measured on Faker's numbers, 500
cards and 200 phone numbers per locale, and on all 13,083 BANKING77 texts for false alarms):
- its card pattern knows prefixes 1, 3, 4, 5[0-5] and 6 and at most 16 digits in four groups, so
  Mastercard's 2-series, 19-digit Visa, 12-digit Maestro and 15-digit JCB pass: recall 0.74. Any
  12 to 19 digits (spaces or dashes between) that pass Luhn: 1.0, no false alarm on BANKING77;
  a random digit run passes Luhn 1 time in 10, so a long reference number may go as a card: it is
  redacted either way.
- its phone matcher takes only numbers valid in their region (leniency VALID): Faker's numbers
  (area codes 555 or 0xx, extensions) pass 0.70 to 0.99 by locale, and a typo makes a real one
  invalid. POSSIBLE (plausible length) took amounts and ages ("$20", "I am 16": 98 texts of
  BANKING77), so a match must also hold 7 digits with separators or a '+', 10 as a bare run, and
  not be a date: recall 1.0 in 9 of 11 locales, 0.94 for en_AU and 0.84 for it_IT (local numbers
  of 8 and 9 bare digits), no false alarm on BANKING77; a bare 10+ digit reference may go as a phone.
The project's: ORDER_NUMBER and ACCOUNT_NUMBER, an identifier right after the words that name it
("order #A1234567", "account number 12345678"). Presidio's context words need an NLP model to
find words near a match, and none is loaded (NoOpNlpEngine), so the context is in the pattern: a
variable-length look-behind (the `regex` module Presidio matches with), so only the number itself
is replaced and the words stay for the model.
"""

from __future__ import annotations

import importlib
import re
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


# 12 to 19 digits, spaces or dashes allowed between them, not part of a longer number or a '+'
# international phone number; Presidio's CreditCardRecognizer then keeps those that pass Luhn.
_CARD = r"(?<![\d+-])\d{4}(?:[ -]?\d){8,15}(?![\d-])"
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
_NOT_DIGIT = re.compile(r"\D")


def _card_recognizer() -> Any:
    from presidio_analyzer import Pattern
    from presidio_analyzer.predefined_recognizers import CreditCardRecognizer

    return CreditCardRecognizer(patterns=[Pattern("card number, 12-19 digits", _CARD, 0.3)])


def _phone_recognizer(regions: tuple[str, ...]) -> Any:
    import phonenumbers
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class PlausiblePhoneRecognizer(PhoneRecognizer):
        """Possible numbers of the regions, with enough digits, and not a date (module docstring)."""

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            kept = []
            for result in super().analyze(text, entities, nlp_artifacts):
                match = text[result.start : result.end]
                digits = len(_NOT_DIGIT.sub("", match))
                if _DATE.fullmatch(match) or digits < (10 if match.isdigit() else 7):
                    continue
                kept.append(result)
            return kept

    return PlausiblePhoneRecognizer(supported_regions=regions, leniency=phonenumbers.Leniency.POSSIBLE)


def build_recognizers(rules: PrivacyRules) -> list[Any]:
    """One recognizer per entity the rules name (and the NER hook's), English, no NLP model."""
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import CryptoRecognizer, IbanRecognizer, IpRecognizer

    makers: dict[str, Any] = {
        "CREDIT_CARD": _card_recognizer,
        "IBAN_CODE": IbanRecognizer,
        "EMAIL_ADDRESS": _offline_email_recognizer,
        "PHONE_NUMBER": lambda: _phone_recognizer(rules.phone_regions),
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
