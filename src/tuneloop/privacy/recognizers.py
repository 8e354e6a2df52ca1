"""The recognizers: Presidio's pattern recognizers with checksums, and two a support desk needs.

Presidio's own, or built on its recognizer classes (each validates what it matched, so a random
16-digit number is not a card):
- CREDIT_CARD: the project's `card_spans` (Luhn on whole digit groups, below);
- IBAN_CODE: country code, check digits and the country's length, mod-97 checksum;
- EMAIL_ADDRESS: a pattern, then a public suffix check (tldextract, read offline: see below);
- PHONE_NUMBER: `phonenumbers`' matcher over the configured regions, made less strict (below);
- IP_ADDRESS (v4 and v6) and CRYPTO (Bitcoin addresses, base58 or bech32 checksum).

Two of Presidio's defaults missed too much of what people type (measured on Faker's numbers, 500
cards and 200 phone numbers per locale, and on all 13,083 BANKING77 texts for false alarms):
- its card pattern knows prefixes 1, 3, 4, 5[0-5] and 6 and at most 16 digits in four groups, so
  Mastercard's 2-series, 19-digit Visa, 12-digit Maestro and 15-digit JCB pass: recall 0.74; and a
  regular expression judges a whole digit run, so "378005062301612 10 pounds" (17 digits) fails
  Luhn. `card_spans` tries the groups of each run: 1.0, no false alarm on BANKING77. A random
  digit run passes Luhn 1 time in 10, so a long reference number may go as a card (redacted
  either way); runs after a '+' or starting with 0 are left to the phone recognizer.
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


# Digit groups separated by one space or dash: where a card number may sit (and more around it).
_DIGIT_RUN = re.compile(r"\d+(?:[ -]\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")
# What a written phone number may look like: digits with spaces, dots, dashes, slashes, brackets.
_PHONE_RUN = re.compile(r"[+(]?\d[\d ().\-/]*\d")
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
_NOT_DIGIT = re.compile(r"\D")


def luhn(digits: str) -> bool:
    """The card number checksum: every second digit from the right doubled, the sum ends in 0."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_spans(text: str) -> list[tuple[int, int]]:
    """Spans of card numbers: 12 to 19 digits in whole groups of a digit run, passing Luhn.

    A regular expression hands back one match per run, so "378005062301612 10 pounds" would be
    judged as 17 digits and fail. Here every start group (earliest first) and end group (longest
    first) of a run is tried, so the card is found and the amount after it left alone. A run right
    after a '+' does not start a card there, nor does a leading 0 (no card brand starts with 0 but
    Maestro's old 0604 range; "00..." and "0..." are how phone numbers start): those are phone
    numbers, which pass Luhn 1 time in 10 too. Groups before the last hold 4 digits or more, as
    cards are written (4-4-4-4, 4-6-5, 4-4-4-3): a sort code and account number ("31-35-67
    07378283") may pass Luhn but are not a card.
    """
    spans = []
    for run in _DIGIT_RUN.finditer(text):
        if run.end() - run.start() < 12:
            continue  # fewer than 12 characters hold fewer than 12 digits: most runs (amounts, years)
        groups = [g.span() for g in _DIGIT_GROUP.finditer(text, run.start(), run.end())]
        short = [b - a < 4 for a, b in groups]
        i = 1 if run.start() > 0 and text[run.start() - 1] == "+" else 0
        while i < len(groups):
            # Groups of 2 or 3 digits are not how cards are written, except the last: a candidate
            # from group i may end at the first short group at the latest.
            last = next((k for k in range(i, len(groups)) if short[k]), len(groups) - 1)
            found = None
            for j in range(last + 1, i, -1):
                digits = "".join(text[a:b] for a, b in groups[i:j])
                if (
                    12 <= len(digits) <= 19
                    and (digits[0] != "0" or digits.startswith("0604"))
                    and luhn(digits)
                ):
                    found = j
                    break
            if found is None:
                i += 1
                continue
            spans.append((groups[i][0], groups[found - 1][1]))
            i = found
    return spans


def _card_recognizer() -> Any:
    from presidio_analyzer import LocalRecognizer, RecognizerResult

    class CardRecognizer(LocalRecognizer):
        """Any 12 to 19 digits that pass Luhn (`card_spans`), validated: score 1.0."""

        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            return [RecognizerResult("CREDIT_CARD", a, b, 1.0) for a, b in card_spans(text)]

    return CardRecognizer(supported_entities=["CREDIT_CARD"], name="CardRecognizer")


def _phone_recognizer(regions: tuple[str, ...]) -> Any:
    import phonenumbers
    from presidio_analyzer import EntityRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class PlausiblePhoneRecognizer(PhoneRecognizer):
        """Possible numbers of the regions, with enough digits, and not a date (module docstring).

        Presidio's runs phonenumbers' matcher over the whole text once per region (~60 µs each,
        11 regions here). This one stops once every phone-like run of 7 to 15 digits (E.164 has at
        most 15) lies whole inside a match, and runs not at all without one. Overlapping matches
        of two regions ("001-335-504-9258": US takes the last ten digits, GB all of it) are
        settled by the redactor: the longer one wins.
        """

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            todo = [
                m.span() for m in _PHONE_RUN.finditer(text) if 7 <= len(_NOT_DIGIT.sub("", m.group())) <= 15
            ]
            results: list[Any] = []
            for region in self.supported_regions:
                if not todo:
                    break
                for match in phonenumbers.PhoneNumberMatcher(
                    text, region, leniency=phonenumbers.Leniency.POSSIBLE
                ):
                    raw = match.raw_string
                    digits = len(_NOT_DIGIT.sub("", raw))
                    if _DATE.fullmatch(raw) or digits < (10 if raw.isdigit() else 7):
                        continue
                    results.append(self._get_recognizer_result(match, text, region, nlp_artifacts))
                    todo = [(a, b) for a, b in todo if not (match.start <= a and b <= match.end)]
            return list(EntityRecognizer.remove_duplicates(results))

    return PlausiblePhoneRecognizer(supported_regions=regions, leniency=phonenumbers.Leniency.POSSIBLE)


# What a text must hold before a recognizer is worth running (each regex pass and Presidio's result
# handling cost ~15-20 µs a recognizer; most texts that hold a digit hold no e-mail, IBAN, ...).
_NEEDS = {
    "EMAIL_ADDRESS": re.compile("@"),
    "IBAN_CODE": re.compile(r"[A-Za-z]{2} ?\d{2}"),
    "IP_ADDRESS": re.compile(r"\d\.\d|:"),
    "CRYPTO": re.compile(r"[13][1-9A-HJ-NP-Za-km-z]{25,34}|bc1", re.IGNORECASE),
    "ORDER_NUMBER": re.compile("order", re.IGNORECASE),
    "ACCOUNT_NUMBER": re.compile(r"account|acct|a/c", re.IGNORECASE),
}


def _gated(recognizer: Any, needs: re.Pattern[str]) -> Any:
    """The recognizer, answering nothing at once for a text without what it `needs`."""
    analyze = recognizer.analyze

    def gated(text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
        return analyze(text, entities, nlp_artifacts) if needs.search(text) else []

    recognizer.analyze = gated
    return recognizer


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
    recognizers = [
        _gated(makers[entity](), _NEEDS[entity]) if entity in _NEEDS else makers[entity]()
        for entity in rules.entities
        if entity in makers
    ]
    for dotted in rules.ner_recognizers:
        module, _, name = dotted.partition(":")
        if not name:
            raise ValueError(f"ner_recognizers: {dotted!r} is not 'package.module:Class'")
        recognizers.append(getattr(importlib.import_module(module), name)())
    return recognizers
