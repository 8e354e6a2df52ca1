"""Class-incremental rounds through the loop's own steps on the tiny random BERT (issue 14).

Round 1 learns alpha, beta and gamma and is promoted. A snapshot then brings a new intent (delta) and
nothing else, the class-incremental case that BANKING77 showed stalling the loop. From that one
champion and snapshot, two rounds are trained that differ only in their config (so in their round
key): one with the defaults (replay of `replay_per_label` rows per old intent, a loss that weighs
every label the same) must learn delta and pass every gate; one without replay sees only delta rows
and collapses onto delta, forgetting the old intents. Early stopping, which selects on the old
intents' rows too, then keeps the epoch before the collapse, which has not learnt delta either: the
version is refused for what it did not learn, and the forgetting shows in its training history.
benchmarks/continual.py measures the same on BANKING77 with the real model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.config import Settings
from tuneloop.registry.store import Registry
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.release import approve_step, promote_step
from tuneloop.steps.round import train_step
from tuneloop.testing import keyword_sentences


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path]:
    from tuneloop.testing import tiny_loop_settings

    root = tmp_path_factory.mktemp("continual")
    settings = tiny_loop_settings(root)
    path = root / "base.csv"
    keyword_sentences(["alpha", "beta", "gamma"], 40, seed=0).to_csv(path, index=False)
    ingest_step(settings, [path])
    first = train_step(settings, progress=False)
    assert first["gate"]["passed"], first["gate"]["reasons"]
    approve_step(settings, first["version"], by="ops")
    Registry(settings).set_tags(first["version"], {"conversion": "passed"})  # conversion: test_convert_step
    promote_step(settings, first["version"], reason="round 1", by="ops")
    path = root / "new-intent.csv"
    keyword_sentences(["delta"], 40, seed=5).to_csv(path, index=False)
    ingest_step(settings, [path])
    return settings, root


def test_round_with_per_label_replay_learns_the_new_intent_and_passes(world) -> None:  # type: ignore[no-untyped-def]
    settings, _ = world
    result = train_step(settings, progress=False)
    assert result["parent_version"] == "1"
    assert result["gate"]["passed"], result["gate"]["reasons"]
    assert result["metrics"]["new"]["macro_f1"] >= 0.9  # delta learned
    assert result["metrics"]["golden"]["macro_f1"] >= 0.9  # alpha, beta, gamma kept
    info = Registry(settings).get_version(result["version"])
    # 3 old intents x replay_per_label rows (15 by default; each has about 29 train rows to draw from).
    assert int(info.tags["replay_rows"]) == 3 * settings.replay_per_label


def test_round_without_replay_forgets_and_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    settings, _ = world
    result = train_step(settings, progress=False, replay_fraction=0.0, replay_per_label=0, distill_weight=0.0)
    assert result["parent_version"] == "1"
    assert result["gate"]["passed"] is False
    info = Registry(settings).get_version(result["version"])
    # The round's report as published on its run (its scratch folder is gone once it registered).
    assert info.run_id is not None
    report = Path(
        Registry(settings).client.download_artifacts(info.run_id, "report", str(settings.home_dir / "dl"))
    )
    assert not (settings.work_dir / "rounds" / info.tags["round_key"]).exists()
    gate = json.loads((report / "gate.json").read_text())
    failed = {c["name"]: c["value"] for c in gate["checks"] if not c["passed"]}
    assert set(failed) == {"new_macro_f1", "union_macro_f1"} and failed["new_macro_f1"] < 0.5, gate
    history = json.loads((report / "train_history.json").read_text())
    scores = [epoch["eval_macro_f1"] for epoch in history["history"]]
    # From epoch 3 on the model answers delta for everything: on the stopping rows (3 of delta, 21 of
    # the old intents) delta's F1 is 2 x 0.125 x 1 / 1.125 = 0.22 and the others' 0, so macro-F1 is
    # 0.22 / 4 = 1/18. The best epoch is the first, before delta was learnt and before the collapse.
    assert history["best_epoch"] == 1 and max(scores[1:]) < scores[0] and min(scores) < 0.1, scores
    assert info.tags["replay_rows"] == "0" and info.tags["gate"] == "failed"
    assert Registry(settings).alias("champion").version == "1"
