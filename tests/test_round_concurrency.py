"""Two processes run the same round at once (the nightly schedule and a manual run): one version.

Real processes against one SQLite MLflow store and one home, on the tiny BERT (hidden 32, one
epoch). Without the round lock both find no version for the key, both train in the same work folder
and both register.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from tuneloop.config import load_settings
from tuneloop.registry.store import Registry
from tuneloop.steps.ingest import ingest_step

RUN_ROUND = """
import json, sys
from tuneloop.config import load_settings
from tuneloop.steps.round import train_step
result = train_step(load_settings(), progress=False)
print("RESULT " + json.dumps({"version": result["version"], "reused": result["reused"]}))
"""


def test_two_processes_running_one_round_register_one_version(tmp_path: Path) -> None:
    from tuneloop.testing import make_tiny_bert

    # The children read their settings from the environment only: drop any TUNELOOP_* of the caller.
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")},
        "TUNELOOP_HOME": str(tmp_path / "home"),
        "TUNELOOP_BASE_MODEL": str(make_tiny_bert(tmp_path / "tiny")),
        "TUNELOOP_EPOCHS": "1",
        "TUNELOOP_LORA_MODULES_TO_SAVE": "pooler",
        "TUNELOOP_GOLDEN_PER_LABEL": "5",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    rows = [{"text": f"{label} request {i}", "label": label} for label in ("a", "b") for i in range(15)]
    data = tmp_path / "drop.csv"
    pd.DataFrame(rows).to_csv(data, index=False)
    settings = load_settings(
        home=tmp_path / "home", golden_per_label=5, base_model=env["TUNELOOP_BASE_MODEL"]
    )
    ingest_step(settings, [data])

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_ROUND],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    results = [
        json.loads(line.removeprefix("RESULT "))
        for out, _ in outputs
        for line in out.splitlines()
        if line.startswith("RESULT ")
    ]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert {r["version"] for r in results} == {"1"}
    assert [v.version for v in Registry(settings).versions()] == ["1"]
