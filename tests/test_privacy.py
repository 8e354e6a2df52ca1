"""Personal data: the redactor on fake data (Faker), its policy, and the doors without a server.

The values are Faker's: Luhn-valid card numbers of every brand, IBANs of six countries, e-mail
addresses, phone numbers of eleven locales in the formats each locale writes them. BANKING77 is the
clean side: none of its 13,083 texts may change (its amounts, ages and dates are not personal data).
"""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from faker import Faker
from typer.testing import CliRunner

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.privacy.redactor import Redactor
from tuneloop.privacy.rules import PrivacyRules
from tuneloop.registry.policy import PolicyError, load_policy
from tuneloop.steps.privacy import privacy_rules, redactor_for

POLICY = PROJECT_ROOT / "registry" / "policy.yaml"
PHONE_LOCALES = ("en_US", "en_GB", "en_IE", "de_DE", "fr_FR", "es_ES", "nl_NL", "en_IN", "en_CA")


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor(privacy_rules(POLICY))


def recall(redactor: Redactor, values: list[str], placeholder: str) -> tuple[float, list[str]]:
    """Share of values gone from a sentence and replaced by the right placeholder; the misses."""
    missed = []
    for value in values:
        out = redactor.redact(f"hi, about {value} again").text
        if value in out or placeholder not in out:
            missed.append(value)
    return 1 - len(missed) / len(values), missed


def test_cards_ibans_and_emails_are_found_in_every_format(redactor: Redactor) -> None:
    fake = Faker("en_GB")
    fake.seed_instance(11)
    cards = [fake.credit_card_number() for _ in range(300)]  # every brand Faker knows, plain digits
    spaced = [" ".join(c[i : i + 4] for i in range(0, len(c), 4)) for c in cards[:100]]
    dashed = ["-".join(c[i : i + 4] for i in range(0, len(c), 4)) for c in cards[100:200]]
    ibans = []
    for locale in ("en_GB", "de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT"):
        local = Faker(locale)
        local.seed_instance(11)
        ibans += [local.iban() for _ in range(30)]
    grouped = [" ".join(i[k : k + 4] for k in range(0, len(i), 4)) for i in ibans[:60]]
    emails = [fake.email() for _ in range(200)] + [fake.free_email() for _ in range(100)]
    for values, placeholder in (
        (cards + spaced + dashed, "<CREDIT_CARD>"),
        (ibans + grouped, "<IBAN>"),
        (emails, "<EMAIL>"),
    ):
        share, missed = recall(redactor, values, placeholder)
        assert share >= 0.99, (placeholder, share, missed[:5])


def test_phone_numbers_are_found_in_the_formats_of_each_locale(redactor: Redactor) -> None:
    shares = {}
    for locale in PHONE_LOCALES:
        fake = Faker(locale)
        fake.seed_instance(11)
        shares[locale], missed = recall(redactor, [fake.phone_number() for _ in range(100)], "<PHONE>")
    assert min(shares.values()) >= 0.95, shares


def test_clean_banking77_texts_are_left_alone(redactor: Redactor, banking77_dir: Path) -> None:
    """Amounts, ages, dates and card-related words are not personal data: no text may change."""
    texts = pd.concat(pd.read_csv(banking77_dir / f) for f in ("train.csv", "test.csv"))["text"]
    changed = [t for t in texts if redactor.redact(t).text != t]
    assert len(texts) > 13_000 and changed == []


def test_order_account_ip_and_wallet_numbers_and_their_words_stay(redactor: Redactor) -> None:
    cases = {
        "my order #A-12345678 never came": "my order #<ORDER_NUMBER> never came",
        "order number 1234567 is late": "order number <ORDER_NUMBER> is late",
        "account number 12345678, sort code 12-34-56": "account number <ACCOUNT_NUMBER>, sort code 12-34-56",
        "login from 203.0.113.7 was not me": "login from <IP_ADDRESS> was not me",
        "sent it to bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq": "sent it to <CRYPTO_WALLET>",
        "order status please": "order status please",
        "transfer on 12/03/2021 of 1,000,000 failed": "transfer on 12/03/2021 of 1,000,000 failed",
    }
    assert {text: redactor.redact(text).text for text in cases} == cases


def test_counts_say_what_was_found_and_a_placeholder_counts_as_held(redactor: Redactor) -> None:
    done = redactor.redact("card 4111 1111 1111 1111, mail a@example.com, old <CREDIT_CARD>")
    assert done.text == "card <CREDIT_CARD>, mail <EMAIL>, old <CREDIT_CARD>"
    assert done.found == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1}
    assert done.placeholders == {"CREDIT_CARD": 1}
    assert done.held == {"CREDIT_CARD": 2, "EMAIL_ADDRESS": 1}


def test_file_bytes_are_redacted_line_by_line_and_odd_bytes_kept(redactor: Redactor) -> None:
    raw = b"text,label\nmy card 4111111111111111,x\n\xff\xfe not utf-8\n"
    out, found = redactor.redact_bytes(raw)
    assert out == b"text,label\nmy card <CREDIT_CARD>,x\n\xff\xfe not utf-8\n" and found == {"CREDIT_CARD": 1}


def test_the_policy_refuses_unknown_entities_and_names_without_a_model(tmp_path: Path) -> None:
    data = yaml.safe_load(POLICY.read_text())
    for entities, said in (
        ({"CREDIT_CARDS": "redact"}, "unknown entities"),
        ({"PERSON": "redact"}, "named-entity"),
    ):
        data["privacy"]["entities"] = entities
        path = tmp_path / "policy.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(PolicyError, match=said):
            load_policy(path)
    with pytest.raises(ValueError, match="named-entity"):
        PrivacyRules(entities={"PERSON": "redact"})


def test_a_policy_without_a_privacy_section_redacts_everything(tmp_path: Path) -> None:
    data = yaml.safe_load(POLICY.read_text())
    del data["privacy"]
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(data))
    rules = privacy_rules(tmp_path / "policy.yaml")
    assert set(rules.entities.values()) == {"redact"} and len(rules.entities) == 8


# --- the doors without a server ---------------------------------------------------------------------
def settings_with(tmp_path: Path, **actions: str) -> object:
    data = yaml.safe_load(POLICY.read_text())
    data["privacy"]["entities"].update(actions)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(data))
    return load_settings(
        home=tmp_path / "home", policy_path=tmp_path / "policy.yaml", landing_settle_seconds=0
    )


def dirty_rows() -> tuple[list[dict[str, str]], dict[str, str]]:
    fake = Faker("en_GB")
    fake.seed_instance(5)
    values = {
        "card": fake.credit_card_number(card_type="visa16"),
        "iban": fake.iban(),
        "email": fake.email(),
        "phone": "+44 20 7946 0958",
    }
    rows = [
        {"text": f"my card {values['card']} was declined", "label": "card_declined"},
        {"text": f"please send it to {values['iban']}", "label": "transfer"},
        {"text": f"write to me at {values['email']}", "label": "contact"},
        {"text": f"call me on {values['phone']} please", "label": "contact"},
        {"text": "where is my parcel", "label": "delivery"},
        {"text": "my parcel never came", "label": "delivery"},
    ]
    return rows, values


def every_byte_under(folder: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_ingest_keeps_placeholders_only_and_counts_what_it_redacted(tmp_path: Path) -> None:
    from tuneloop.steps.ingest import ingest_step

    settings = settings_with(tmp_path)
    rows, values = dirty_rows()
    pd.DataFrame(rows).to_csv(tmp_path / "in.csv", index=False)
    result = ingest_step(settings, [tmp_path / "in.csv"], track=False)  # type: ignore[arg-type]
    assert result["accepted"] == 6
    assert result["personal_data"] == {
        "CREDIT_CARD": 1,
        "EMAIL_ADDRESS": 1,
        "IBAN_CODE": 1,
        "PHONE_NUMBER": 1,
    }
    stored = every_byte_under(tmp_path / "home")
    assert not [k for k, v in values.items() if v.encode() in stored]
    assert b"<CREDIT_CARD>" in stored and b"<IBAN>" in stored
    manifest = json.loads((tmp_path / "home" / "snapshots" / "snap-0001" / "manifest.json").read_text())
    assert manifest["batch"]["personal_data"] == result["personal_data"]


def test_a_row_the_policy_quarantines_is_quarantined_redacted(tmp_path: Path) -> None:
    from tuneloop.steps.ingest import ingest_step

    settings = settings_with(tmp_path, CREDIT_CARD="quarantine")
    rows, values = dirty_rows()
    pd.DataFrame(rows).to_csv(tmp_path / "in.csv", index=False)
    # A feedback row the service redacted before landing it holds the placeholder, not the number.
    (tmp_path / "fb.jsonl").write_text(
        json.dumps({"text": "charged twice on <CREDIT_CARD>", "label": "x"}) + "\n"
    )
    result = ingest_step(settings, [tmp_path / "in.csv", tmp_path / "fb.jsonl"], track=False)  # type: ignore[arg-type]
    assert result["accepted"] == 5 and result["reasons"] == {"personal_data": 2}
    with open(result["quarantine_report"], newline="") as handle:
        quarantined = list(csv.DictReader(handle))
    assert {r["text"] for r in quarantined} == {
        "my card <CREDIT_CARD> was declined",
        "charged twice on <CREDIT_CARD>",
    }
    assert all(r["reason"] == "personal_data" and "CREDIT_CARD" in r["detail"] for r in quarantined)
    assert values["card"].encode() not in every_byte_under(tmp_path / "home")


def test_a_file_quarantined_whole_is_kept_redacted(tmp_path: Path) -> None:
    from tuneloop.steps.ingest import ingest_step

    settings = settings_with(tmp_path)
    (tmp_path / "wrong.csv").write_text("message,intent\nmy card 4111 1111 1111 1111 is stuck,card\n")
    result = ingest_step(settings, [tmp_path / "wrong.csv"], track=False)  # type: ignore[arg-type]
    assert [f["reason"] for f in result["files_quarantined"]] == ["wrong_columns"]
    kept = every_byte_under(tmp_path / "home" / "quarantine")
    assert b"4111 1111 1111 1111" not in kept and b"my card <CREDIT_CARD> is stuck" in kept


def test_feedback_text_is_redacted_before_the_digest_check_and_landing(
    tmp_path: Path, redactor: Redactor
) -> None:
    from tuneloop.serve.feedback import ClaimBook, FeedbackDesk
    from tuneloop.serve.tokens import RequestRecord, sign_request, text_digest

    secret = b"s" * 32
    raw = "my card 4111 1111 1111 1111 was declined"
    classified = redactor.redact(raw).text  # what /classify signed: the redacted text's digest
    record = RequestRecord(
        "n" * 32, time.time(), (("1", "card_declined"),), (text_digest(secret, classified),)
    )

    class Counts:
        def feedback(self, version: str, correct: bool) -> None: ...

    desk = FeedbackDesk(
        secret=secret,
        max_age_s=3600,
        label_pattern=r"^[a-z_]+$",
        max_chars=500,
        claims=ClaimBook(tmp_path / "claims", 3600),
        landing=tmp_path / "landing",
        observer=Counts(),
        redact=lambda text: redactor.redact(text).text,
    )
    taken = asyncio.run(desk.take(sign_request(secret, record), 0, "card_declined", raw))
    assert taken.landed
    landed = every_byte_under(tmp_path / "landing")
    assert b"4111" not in landed and classified.encode() in landed


def test_redact_check_finds_an_old_snapshot_and_says_how_to_keep_it_out(tmp_path: Path) -> None:
    from tuneloop.cli import app
    from tuneloop.data.ingest import ingest
    from tuneloop.steps.ingest import ingest_config

    settings = settings_with(tmp_path)
    rows, values = dirty_rows()
    pd.DataFrame(rows).to_csv(tmp_path / "old.csv", index=False)
    ingest([tmp_path / "old.csv"], ingest_config(settings))  # type: ignore[arg-type]  # before redaction
    env = {"TUNELOOP_HOME": str(tmp_path / "home"), "TUNELOOP_POLICY_PATH": str(tmp_path / "policy.yaml")}
    runner = CliRunner()
    said = runner.invoke(app, ["redact", "--check", "--json"], env=env)
    assert said.exit_code == 1, said.output
    report = json.loads(said.stdout)
    assert report["snapshots"] == ["snap-0001"]
    assert report["found"] == {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "IBAN_CODE": 1, "PHONE_NUMBER": 1}
    assert "tuneloop exclude" in report["message"]
    assert not [v for v in values.values() if v in said.output]  # counts, never the values
    text = runner.invoke(app, ["redact", "--check"], env=env)
    assert text.exit_code == 1 and "snap-0001" in text.output
    shown = runner.invoke(app, ["redact", "write to a@example.com or +44 20 7946 0958"], env=env)
    assert shown.exit_code == 0 and shown.output.strip() == "write to <EMAIL> or <PHONE>"


def test_status_shows_what_each_snapshot_had_redacted(tmp_path: Path) -> None:
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.status import data_status

    settings = settings_with(tmp_path)
    rows, _ = dirty_rows()
    pd.DataFrame(rows).to_csv(tmp_path / "in.csv", index=False)
    ingest_step(settings, [tmp_path / "in.csv"], track=False)  # type: ignore[arg-type]
    snapshot = data_status(settings)["snapshots"][0]  # type: ignore[arg-type]
    assert Counter(snapshot["personal_data"]) == Counter(
        {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1, "IBAN_CODE": 1, "PHONE_NUMBER": 1}
    )


def test_the_redactor_is_built_once_per_policy_content(tmp_path: Path) -> None:
    settings = settings_with(tmp_path)
    first = redactor_for(settings)  # type: ignore[arg-type]
    assert redactor_for(settings) is first  # type: ignore[arg-type]
    settings2 = settings_with(tmp_path, EMAIL_ADDRESS="quarantine")  # same path, new content
    assert redactor_for(settings2) is not first  # type: ignore[arg-type]


def test_a_landing_file_with_personal_data_is_removed_once_its_rows_are_committed(tmp_path: Path) -> None:
    from tuneloop.steps.ingest import ingest_step

    settings = settings_with(tmp_path)
    landing = tmp_path / "home" / "landing"
    landing.mkdir(parents=True)
    rows, values = dirty_rows()
    pd.DataFrame(rows).to_csv(landing / "dirty.csv", index=False)
    pd.DataFrame(rows[4:]).to_csv(landing / "clean.csv", index=False)
    pd.DataFrame(rows).to_csv(tmp_path / "elsewhere.csv", index=False)
    result = ingest_step(settings, [], track=False)  # type: ignore[arg-type]  # the landing folder
    assert result["landing_removed"] == [str(landing / "dirty.csv")]
    assert sorted(p.name for p in landing.iterdir()) == ["clean.csv"]  # nothing private: kept
    assert not [v for v in values.values() if v.encode() in every_byte_under(tmp_path / "home")]
    named = ingest_step(settings, [tmp_path / "elsewhere.csv"], track=False)  # type: ignore[arg-type]
    assert named["landing_removed"] == [] and (tmp_path / "elsewhere.csv").is_file()  # the caller's

    (tmp_path / "keep" / "home" / "landing").mkdir(parents=True)
    kept = settings_with(tmp_path / "keep")
    policy = yaml.safe_load(Path(kept.policy_path).read_text())  # type: ignore[attr-defined]
    policy["privacy"]["landing_files_with_personal_data"] = "keep"
    Path(kept.policy_path).write_text(yaml.safe_dump(policy))  # type: ignore[attr-defined]
    pd.DataFrame(rows).to_csv(tmp_path / "keep" / "home" / "landing" / "dirty.csv", index=False)
    assert ingest_step(kept, [], track=False)["landing_removed"] == []  # type: ignore[arg-type]
    assert (tmp_path / "keep" / "home" / "landing" / "dirty.csv").is_file()


def test_a_phone_number_right_before_a_card_number_is_found_too(redactor: Redactor) -> None:
    """phonenumbers' matcher reads '+44118 496 0264 5530972151340591' as one number until the
    card is replaced: the redactor runs again on its own output."""
    done = redactor.redact("+44118 496 0264 5530972151340591 river")
    assert done.text == "<PHONE> <CREDIT_CARD> river"
    assert done.found == {"PHONE_NUMBER": 1, "CREDIT_CARD": 1}


def test_the_named_entity_hook_loads_a_recognizer_and_turns_the_digit_shortcut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No package here ships a named-entity model; the hook takes one, as a Presidio recognizer."""
    (tmp_path / "fake_ner.py").write_text(
        "from presidio_analyzer import Pattern, PatternRecognizer\n"
        "class Names(PatternRecognizer):\n"
        "    def __init__(self):\n"
        "        pattern = Pattern('name', r'\\bAda Lovelace\\b', 0.9)\n"
        "        super().__init__(supported_entity='PERSON', patterns=[pattern])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rules = PrivacyRules(
        entities={"PERSON": "redact", "EMAIL_ADDRESS": "redact"}, ner_recognizers=("fake_ner:Names",)
    )
    with_ner = Redactor(rules)
    assert with_ner.may_hold("no digits here")
    assert with_ner.redact("this is Ada Lovelace, ada@example.com").text == "this is <PERSON>, <EMAIL>"
    with pytest.raises(ValueError, match="package.module:Class"):
        Redactor(PrivacyRules(entities={"PERSON": "redact"}, ner_recognizers=("fake_ner",)))


def test_a_parquet_file_quarantined_whole_is_kept_as_a_redacted_table(tmp_path: Path) -> None:
    """Parquet compresses its strings, so a byte scan would not see a card number it keeps."""
    from tuneloop.steps.ingest import ingest_step

    settings = settings_with(tmp_path)
    rows = {"message": ["my card 4111 1111 1111 1111 is stuck", "hello"], "intent": ["card", "greet"]}
    pd.DataFrame(rows).to_parquet(tmp_path / "wrong.parquet", compression="zstd")
    result = ingest_step(settings, [tmp_path / "wrong.parquet"], track=False)  # type: ignore[arg-type]
    assert [f["reason"] for f in result["files_quarantined"]] == ["wrong_columns"]
    (kept,) = (tmp_path / "home" / "quarantine" / "files").rglob("*.parquet")
    table = pd.read_parquet(kept)
    assert table["message"].tolist() == ["my card <CREDIT_CARD> is stuck", "hello"]
    assert result["personal_data"] == {"CREDIT_CARD": 1}


def test_a_number_after_a_card_or_an_iban_stays_and_is_not_taken_for_a_phone(redactor: Redactor) -> None:
    """A pattern judged the whole digit run: the card and the amount after it failed Luhn together,
    and a phone match from an IBAN's last group into the amount took the amount with it."""
    cases = {
        "card 378005062301612 10 pounds": "card <CREDIT_CARD> 10 pounds",
        "card 4111 1111 1111 1111 10 pounds": "card <CREDIT_CARD> 10 pounds",
        "send to GB82 WEST 1234 5698 7654 32 10 pounds today": "send to <IBAN> 10 pounds today",
        "aged 16, IBAN DE89 3704 0044 0532 0130 00 18 years": "aged 16, IBAN <IBAN> 18 years",
        "call 001-335-504-9258 now": "call <PHONE> now",  # 13 digits that pass Luhn: still a phone
        # A sort code and account number whose last 12 digits pass Luhn: not written like a card.
        "my account 31-35-67 07378283 is locked": "my account <ACCOUNT_NUMBER> is locked",
    }
    assert {text: redactor.redact(text).text for text in cases} == cases


def test_a_policy_with_no_entities_looks_for_nothing_and_fails_nothing(tmp_path: Path) -> None:
    data = yaml.safe_load(POLICY.read_text())
    data["privacy"]["entities"] = {}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(data))
    nothing = Redactor(privacy_rules(tmp_path / "policy.yaml"))
    text = "card 4111 1111 1111 1111 <CREDIT_CARD>"
    assert not nothing.may_hold(text)
    assert (nothing.redact(text).text, nothing.redact(text).held) == (text, {})
