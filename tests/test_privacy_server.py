"""Personal data leaves no trace: a landing file and a feedback row through the whole loop.

Faker makes a card number, an IBAN, an e-mail address and a phone number; they go into texts of a
landing file, which is ingested, trained on (a round: MLflow run, datasets, model version),
converted, served by a real `bentoml serve` on 127.0.0.1 and sent back through /feedback, whose row
is ingested again. Then every file under the test's folder (TUNELOOP_HOME with the MLflow SQLite
store and artifact folders, the server's log) and the logs of this process are scanned for the
values, as written and as bare digits.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from faker import Faker
from mlflow import MlflowClient

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.serve.scopes import TOKEN_SCOPES
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences, make_tiny_bert

pytestmark = pytest.mark.e2e

LENIENT = {
    "max_abs_logit_diff_fp32": 1.0,
    "int8_max_macro_f1_drop_points": 100,
    "int8_min_argmax_agreement": 0,
}


def fake_values() -> dict[str, str]:
    fake = Faker("en_GB")
    fake.seed_instance(22)
    return {
        "card": fake.credit_card_number(card_type="mastercard"),
        "iban": fake.iban(),
        "email": fake.email(),
        "phone": fake.phone_number(),
    }


def forms(values: dict[str, str]) -> list[bytes]:
    """Each value as written, and card and phone numbers as bare digits too (what a store may keep)."""
    found = [v.encode() for v in values.values()]
    found += [re.sub(r"\D", "", values[k]).encode() for k in ("card", "phone")]
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.TransportError:
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_no_trace_of_personal_data_anywhere_after_the_whole_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tuneloop.steps.convert import convert_step
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step

    caplog.set_level(logging.DEBUG)
    values = fake_values()
    policy = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    policy["conversion"] = LENIENT
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    settings = load_settings(
        home=tmp_path / "home",
        base_model=str(make_tiny_bert(tmp_path / "tiny")),
        policy_path=tmp_path / "policy.yaml",
        landing_settle_seconds=0,
        **{**TINY_TRAIN_SETTINGS, "epochs": 1},
    )
    assert (
        settings.resolved_tracking_uri.startswith("sqlite:")
        and str(tmp_path) in settings.resolved_tracking_uri
    )
    rows = keyword_sentences(["alpha", "beta", "gamma"], 20, seed=0)
    carriers = {
        "card": "my card {} was declined",
        "iban": "send it to {}",
        "email": "mail {}",
        "phone": "ring {}",
    }
    for i, (kind, value) in enumerate(values.items()):  # in a training row of each label, and more
        for j in range(3):
            row = (i * 3 + j) * 5  # rows 0..55: every label
            rows.loc[len(rows)] = {
                "text": f"{rows.text[row]} {carriers[kind].format(value)}",
                "label": rows.label[row],
            }
    settings.landing_dir.mkdir(parents=True)
    rows.to_csv(settings.landing_dir / "dirty.csv", index=False)

    first = ingest_step(settings, [])
    assert first["personal_data"] == {"CREDIT_CARD": 3, "EMAIL_ADDRESS": 3, "IBAN_CODE": 3, "PHONE_NUMBER": 3}
    assert first["landing_removed"] == [str(settings.landing_dir / "dirty.csv")]
    assert train_step(settings, progress=False)["version"] == "1"
    convert_step(settings, "1", calibrate=False, tensorrt="off")
    client = MlflowClient(settings.resolved_tracking_uri)
    client.set_registered_model_alias(settings.model_name, "champion", "1")
    version_tags = client.get_model_version(settings.model_name, "1").tags
    assert '"CREDIT_CARD": 3' in version_tags["personal_data"]

    port = _free_port()
    env = {
        **os.environ,
        "TUNELOOP_HOME": str(settings.home_dir),
        "TUNELOOP_POLICY_PATH": str(tmp_path / "policy.yaml"),
        "TUNELOOP_SERVE_POLL_S": "0.5",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "BENTOML_DO_NOT_TRACK": "True",
    }
    for variable in TOKEN_SCOPES:  # any bearer token would turn auth on
        env.pop(variable, None)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        cmd = [sys.executable, "-m", "bentoml", "serve", "tuneloop.service:TuneloopService"]
        proc = subprocess.Popen(
            [*cmd, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=log
        )
        server = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        try:
            _wait(lambda: server.get("/readyz").status_code == 200, 120, "the champion to serve")
            served(server, values)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            server.close()

    landed = list(settings.landing_dir.glob("feedback-*.jsonl"))
    assert len(landed) == 1 and "<CREDIT_CARD>" in landed[0].read_text()
    again = ingest_step(settings, [])
    assert again["accepted"] == 1 and again["personal_data"]["CREDIT_CARD"] == 1  # as a placeholder
    assert again["landing_removed"] == []  # it held placeholders only

    leaks = {}
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and not path.is_relative_to(tmp_path / "tiny"):
            data = path.read_bytes()
            hits = [f.decode() for f in forms(values) if f in data]
            if hits:
                leaks[str(path.relative_to(tmp_path))] = hits
    assert leaks == {}
    assert (tmp_path / "home" / "mlflow.db").is_file() or any(tmp_path.rglob("*.db"))
    assert not [f for f in forms(values) if f.decode() in caplog.text]


def served(server: httpx.Client, values: dict[str, str]) -> None:
    """/classify, /feedback, /status and /metrics with personal data in the texts."""
    card = f"my card {values['card']} was declined apple banana"
    placeholder = "my card <CREDIT_CARD> was declined apple banana"
    answer = server.post("/classify", json={"texts": [card, placeholder]})
    assert answer.status_code == 200, answer.text
    a, b = answer.json()["predictions"]
    assert (a["label"], a["score"], a["top_k"]) == (
        b["label"],
        b["score"],
        b["top_k"],
    )  # the model saw the same
    text = f"{values['iban']} {values['email']} {values['phone']} {values['card']} river ocean"
    answer = server.post("/classify", json={"texts": [text]}).json()
    taken = server.post(
        "/feedback", json={"request_id": answer["request_id"], "index": 0, "label": "beta", "text": text}
    )
    assert taken.status_code == 200 and taken.json()["landed"] is True, taken.text
    refused = server.post(  # a label holding a card number: a 400 that does not echo it
        "/feedback", json={"request_id": answer["request_id"], "index": 0, "label": values["card"]}
    )
    assert refused.status_code == 400 and values["card"] not in refused.text
    said = server.get("/status").text + server.get("/metrics").text
    assert not [f for f in forms(values) if f.decode() in said]
    metrics = server.get("/metrics").text
    for entity, n in (("CREDIT_CARD", 2), ("IBAN_CODE", 1), ("EMAIL_ADDRESS", 1), ("PHONE_NUMBER", 1)):
        labels = f'endpoint="classify",entity="{entity}",project="default"'
        line = f"tuneloop_personal_data_total{{{labels}}} {float(n)}"
        assert line in metrics, (line, [m for m in metrics.splitlines() if "personal" in m])
    # The feedback's text held one of each; the refused label held a second card number.
    fed = 'tuneloop_personal_data_total{{endpoint="feedback",entity="{}",project="default"}} {}'
    assert fed.format("CREDIT_CARD", 2.0) in metrics
    assert fed.format("PHONE_NUMBER", 1.0) in metrics
