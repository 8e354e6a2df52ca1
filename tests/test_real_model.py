"""The real all-MiniLM-L6-v2 on real BANKING77 rows: the model is the point here, so it is real.

Sized for CI's 2 cores: round 1 learns 15 intents from 32 rows each (480 rows: 75 golden, ~80 eval,
~325 train), round 2 brings 5 new intents (160 rows) and must learn them while the golden set of
the first 15 loses no more than `registry/policy.yaml` allows. About a minute of training in all.
"""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.data.snapshot import load_split
from tuneloop.evaluate.metrics import score
from tuneloop.steps.convert import convert_step
from tuneloop.steps.evaluate import evaluate_step
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.release import approve_step, promote_step
from tuneloop.steps.round import train_step

pytestmark = pytest.mark.slow

FIRST, SECOND, PER_LABEL = 15, 5, 32
# Stated target for round 1 on this subset: measured 0.924 new-eval macro-F1 (0.960 on golden) on
# the 2-core CPU with seed 13; the bar leaves room for numeric drift across machines.
ROUND1_MIN_MACRO_F1 = 0.80
NEW_INTENT_MIN_F1 = 0.6


@pytest.fixture(scope="module")
def banking_drops(banking77_dir, tmp_path_factory):
    frame = pd.read_csv(banking77_dir / "train.csv")
    labels = sorted(frame["category"].unique())[: FIRST + SECOND]
    picked = frame[frame["category"].isin(labels)].groupby("category").sample(PER_LABEL, random_state=7)
    folder = tmp_path_factory.mktemp("banking")
    first = picked[picked["category"].isin(labels[:FIRST])]
    second = picked[picked["category"].isin(labels[FIRST:])]
    first.to_csv(folder / "first.csv", index=False)
    second.to_csv(folder / "second.csv", index=False)
    return folder / "first.csv", folder / "second.csv", labels


def test_minilm_learns_banking77_then_new_intents_without_forgetting(banking_drops, tmp_path):
    first, second, labels = banking_drops
    settings = load_settings(
        home=tmp_path / "home",
        label_column="category",
        epochs=8,
        batch_size=16,  # ~300 train rows: 19 steps an epoch x 8 = 152 LoRA steps
        # Round 2 brings 5 intents the champion never saw; replaying as many old rows as new ones
        # (~110) keeps each of the 15 old intents rehearsed ~7 times. At the 0.3 default one old
        # intent's 5-row golden F1 fell 0.667 -> 0.333 and the gate (rightly) refused the round.
        replay_fraction=1.0,
        policy_path=PROJECT_ROOT / "registry" / "policy.yaml",
    )
    ingest_step(settings, [first])
    round1 = train_step(settings, progress=False)
    assert round1["gate"]["passed"], round1["gate"]["reasons"]
    assert round1["metrics"]["macro_f1"] >= ROUND1_MIN_MACRO_F1
    approve_step(settings, round1["version"], by="test")
    # The real fine-tuned model through the real INT8 recipe, judged by the default policy's gates
    # (agreement >= 0.995 and macro-F1 within 0.5 points on eval and golden). Converted before the
    # promotion: only a version whose conversion passed may become champion.
    conversion = convert_step(settings, round1["version"], tensorrt="off")
    assert conversion["parity"]["passed"], conversion["parity"]["reasons"]
    promote_step(settings, round1["version"], reason="first model", by="test")
    assert (
        conversion["artifacts"]["model.int8.onnx"]["bytes"]
        <= 0.3 * conversion["artifacts"]["model.onnx"]["bytes"]
    )
    # The champion through MLflow's own loader (INT8 now) labels the eval split as `tuneloop evaluate` does.
    eval_rows = load_split(settings.snapshots_dir, round1["data_snapshot"], "eval")
    eval_rows.rename(columns={"label": "category"}).to_csv(tmp_path / "eval.csv", index=False)
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    serves = {"int8": "onnx-int8", "fp32": "onnx-fp32"}  # INT8 where it beat fp32 on this host
    assert model.unwrap_python_model().backend == serves[conversion["int8_choice"]["serve"]]
    report = evaluate_step(settings, round1["version"], tmp_path / "eval.csv")
    pyfunc = score(
        eval_rows["label"].tolist(), model.predict(eval_rows[["text"]])["label"].tolist(), report["labels"]
    )
    assert pyfunc.confusion == report["confusion"]

    ingest_step(settings, [second])
    round2 = train_step(settings, progress=False)
    assert round2["parent_version"] == round1["version"]
    # Gate passed = golden regression and per-label drops within the policy's limits.
    assert round2["gate"]["passed"], round2["gate"]["reasons"]
    folder = mlflow.artifacts.download_artifacts(run_id=round2["run_id"], artifact_path="report")
    table = pd.read_csv(f"{folder}/per_label.csv")
    new = table[table["label"].isin(labels[FIRST:])]
    assert len(new) == SECOND
    print(
        json.dumps(
            {"round1": round1["metrics"], "round2": round2["metrics"], "int8": conversion["parity"]["sets"]}
        )
    )
    assert (new["f1_new"] >= NEW_INTENT_MIN_F1).all(), new
