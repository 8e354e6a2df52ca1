"""Evaluation: offline metric modules, scores vs scikit-learn, backward transfer, gates and plots."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from tuneloop.evaluate import (
    EvalReport,
    GateThresholds,
    backward_transfer,
    build_report,
    decide_gates,
    score,
)
from tuneloop.evaluate.metrics import METRICS_DIR
from tuneloop.evaluate.plots import (
    backward_transfer_figure,
    confusion_matrix_figure,
    per_label_table,
    save_figure,
)
from tuneloop.registry.policy import GatePolicy, load_policy

REPO = Path(__file__).resolve().parents[1]
LABELS = [f"intent_{i}" for i in range(10)]
GOLDEN_PER_LABEL = 5  # the default `golden_per_label`
NEW_PER_LABEL = 12
POLICY = GatePolicy(
    min_macro_f1=0.70,
    min_union_macro_f1=0.70,
    max_golden_regression_points=2.0,
    max_per_label_drop_points=15.0,
    min_label_support=5,
    # The point estimate alone: the tests below fix exact rows; the paired bootstrap has its own.
    golden_drop_confidence=0.0,
)


def _truth(per_label: int, labels: list[str] = LABELS) -> list[str]:
    return [label for label in labels for _ in range(per_label)]


def _with_errors(y_true: list[str], errors: dict[int, str]) -> list[str]:
    """A copy of y_true with the rows at the given indices predicted as another label."""
    return [errors.get(i, label) for i, label in enumerate(y_true)]


def _report(new_pred: list[str], golden_pred: list[str], version: str | None = None) -> EvalReport:
    """Report for predictions on the fixed new (12/label) and golden (5/label) sets, via build_report."""
    new_true, golden_true = _truth(NEW_PER_LABEL), _truth(GOLDEN_PER_LABEL)
    table = {f"new-{i}": p for i, p in enumerate(new_pred)} | {
        f"gold-{i}": p for i, p in enumerate(golden_pred)
    }
    sets = {
        "new": ([f"new-{i}" for i in range(len(new_true))], new_true),
        "golden": ([f"gold-{i}" for i in range(len(golden_true))], golden_true),
    }
    return build_report(
        lambda texts: [table[t] for t in texts], sets, LABELS, version=version, model_labels=LABELS
    )


# --- offline metric modules ------------------------------------------------------------------------

_PROBE = """
import evaluate, inspect, json, sys
from tuneloop.evaluate.metrics import load_metric
out = {}
for name in ("accuracy", "f1"):
    metric = load_metric(name)
    out[name] = {"name": metric.name, "file": inspect.getfile(type(metric))}
out["f1_value"] = load_metric("f1").compute(predictions=["a", "b"], references=["a", "a"], average="macro")
try:
    evaluate.load("accuracy")
    out["hub"] = "reachable"
except Exception as exc:
    out["hub"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def test_packaged_metrics_load_offline_and_are_the_packaged_files(tmp_path: Path) -> None:
    # A fresh process with the Hub switched off and its endpoint pointing nowhere, and an empty module
    # cache: whatever loads must come from the package. The hub name must fail in the same process,
    # proving the successful loads did not go through the Hub.
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HOME=str(tmp_path / "hf"),
    )
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["hub"].startswith("FileNotFoundError") and "Hugging Face Hub" in out["hub"], out["hub"]
    for short, folder in (("accuracy", "tuneloop_accuracy"), ("f1", "tuneloop_f1")):
        assert out[short]["name"] == folder
        loaded = Path(out[short]["file"])
        # evaluate imports a copy from its module cache: byte-identical to the file we ship.
        assert loaded.is_relative_to(tmp_path / "modules")
        assert loaded.read_bytes() == (METRICS_DIR / folder / f"{folder}.py").read_bytes()
    assert out["f1_value"]["f1"] == pytest.approx(f1_score(["a", "a"], ["a", "b"], average="macro"))


def test_metric_scripts_import_one_module_per_line() -> None:
    # evaluate's dependency scan reads `import a, b` as a package called "a,".
    for script in METRICS_DIR.glob("*/*.py"):
        for line in script.read_text().splitlines():
            if line.startswith("import "):
                assert "," not in line, f"{script.name}: {line}"


# --- scores ----------------------------------------------------------------------------------------


def test_scores_match_sklearn_and_macro_f1_skips_unsupported_labels() -> None:
    rng = random.Random(7)
    labels = ["a", "b", "c", "d", "unseen"]
    y_true = [rng.choice(labels[:4]) for _ in range(80)]
    y_pred = [t if rng.random() < 0.7 else rng.choice(labels) for t in y_true]
    scores = score(y_true, y_pred, labels)

    assert scores.n == 80 and scores.labels == labels
    assert scores.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert scores.macro_f1 == pytest.approx(f1_score(y_true, y_pred, labels=labels[:4], average="macro"))
    # The documented choice: the label with no support does not drag the average down.
    assert scores.macro_f1 > f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0) + 0.01
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        got = scores.per_label[label]
        assert (got.precision, got.recall, got.f1) == pytest.approx((p[i], r[i], f[i]))
        assert got.support == s[i]
    assert scores.confusion == confusion_matrix(y_true, y_pred, labels=labels).tolist()


def test_score_refuses_labels_outside_the_label_list() -> None:
    with pytest.raises(ValueError, match="stray"):
        score(["a", "stray"], ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="rows"):
        score(["a"], ["a", "b"], ["a", "b"])


def test_build_report_predicts_each_set_once_and_adds_the_union() -> None:
    calls: list[int] = []

    def predict(texts: list[str]) -> list[str]:
        calls.append(len(texts))
        return ["x" if t.startswith("x") else "y" for t in texts]

    sets = {"new": (["x1", "y1", "x2"], ["x", "y", "y"]), "golden": (["y2", "x3"], ["y", "x"])}
    report = build_report(predict, sets, ["x", "y"], version="4")
    assert sorted(calls) == [2, 3]  # one call per set: the union reuses predictions
    assert report.union is not None and report.union.n == 5
    assert report.union.confusion == [[2, 0], [1, 2]]
    assert report.name == "v4"


# --- backward transfer -----------------------------------------------------------------------------


def test_backward_transfer_is_negative_for_forgetting_and_skips_unknown_labels() -> None:
    golden = _truth(GOLDEN_PER_LABEL)
    champion = score(golden, _with_errors(golden, {5: "intent_0"}), LABELS)  # intent_1 imperfect
    # Candidate: fixes intent_1, forgets intent_2 (two rows of five go to intent_3).
    candidate = score(golden, _with_errors(golden, {10: "intent_3", 11: "intent_3"}), LABELS)
    transfer = backward_transfer(candidate, champion, champion_labels=LABELS[:9])
    assert transfer.per_label["intent_2"] < 0
    assert transfer.per_label["intent_1"] > 0
    assert "intent_9" not in transfer.per_label  # the champion never knew it
    assert transfer.mean == pytest.approx(sum(transfer.per_label.values()) / 9)


# --- gates -----------------------------------------------------------------------------------------


def _champion() -> EvalReport:
    new_true, golden_true = _truth(NEW_PER_LABEL), _truth(GOLDEN_PER_LABEL)
    return _report(_with_errors(new_true, {0: "intent_1"}), golden_true, version="3")


def test_good_candidate_passes_every_gate() -> None:
    candidate = _report(_truth(NEW_PER_LABEL), _truth(GOLDEN_PER_LABEL))
    decision = decide_gates(candidate, _champion(), POLICY)
    assert decision.passed, decision.reasons
    assert decision.reasons == []
    assert [c.name for c in decision.checks] == [
        "new_macro_f1",
        "union_macro_f1",
        "golden_macro_f1_regression",
        "golden_per_label_drop",
    ]
    assert decision.tag_value == "passed"


def test_golden_regression_beyond_the_maximum_fails_with_figures() -> None:
    golden = _truth(GOLDEN_PER_LABEL)
    # Four mistakes on four different labels: each costs ~2 points of macro-F1 over 10 labels.
    errors = {0: "intent_9", 6: "intent_8", 12: "intent_7", 18: "intent_6"}
    candidate = _report(_truth(NEW_PER_LABEL), _with_errors(golden, errors))
    decision = decide_gates(candidate, _champion(), POLICY)
    assert not decision.passed
    check = next(c for c in decision.checks if c.name == "golden_macro_f1_regression")
    assert not check.passed and check.value is not None and check.value > 2.0
    reason = next(r for r in decision.reasons if r.startswith("golden macro-F1"))
    assert f"dropped {check.value:.1f} points vs champion v3 (max 2.0)" in reason


def test_one_forgotten_label_fails_even_when_the_average_holds() -> None:
    golden = _truth(GOLDEN_PER_LABEL)
    lenient = POLICY.model_copy(update={"max_golden_regression_points": 10.0})
    candidate = _report(_truth(NEW_PER_LABEL), _with_errors(golden, {10: "intent_3", 11: "intent_3"}))
    decision = decide_gates(candidate, _champion(), lenient)
    checks = {c.name: c for c in decision.checks}
    assert checks["golden_macro_f1_regression"].passed
    assert not checks["golden_per_label_drop"].passed
    assert not decision.passed
    assert any("label 'intent_2' dropped 25.0 points vs champion v3 (max 15.0" in r for r in decision.reasons)


def test_per_label_drop_ignores_labels_below_the_support_minimum() -> None:
    golden = _truth(GOLDEN_PER_LABEL)
    candidate = _report(_truth(NEW_PER_LABEL), _with_errors(golden, {10: "intent_3", 11: "intent_3"}))
    strict_support = POLICY.model_copy(
        update={"max_golden_regression_points": 10.0, "min_label_support": GOLDEN_PER_LABEL + 1}
    )
    decision = decide_gates(candidate, _champion(), strict_support)
    assert decision.passed, decision.reasons


def test_labels_the_champion_never_knew_cannot_hide_forgetting() -> None:
    # The champion knew 9 intents (intent_9 is new this round; it predicted intent_0 for those rows)
    # and its report does not say so: the gates infer it from its predictions. The candidate learns
    # intent_9 perfectly but forgets some of intent_1 and intent_3. Over all 10 labels its golden
    # macro-F1 would look higher than the champion's (0.938 vs 0.867); over the 9 known ones it fell
    # 3.2 points (0.963 -> 0.931), beyond the 2.0 allowed.
    golden = _truth(GOLDEN_PER_LABEL)
    champion_golden = ["intent_0" if label == "intent_9" else label for label in golden]
    champion_new = ["intent_0" if label == "intent_9" else label for label in _truth(NEW_PER_LABEL)]
    champion = _report(champion_new, champion_golden, version="3").model_copy(update={"model_labels": None})
    assert champion.known_labels() == LABELS[:9]
    candidate = _report(
        _truth(NEW_PER_LABEL), _with_errors(golden, {5: "intent_2", 6: "intent_2", 15: "intent_4"})
    )
    decision = decide_gates(candidate, champion, POLICY)
    check = next(c for c in decision.checks if c.name == "golden_macro_f1_regression")
    assert not check.passed and check.value == pytest.approx(3.2, abs=0.05)
    assert decision.backward_transfer is not None
    assert "intent_9" not in decision.backward_transfer.per_label
    fig = backward_transfer_figure(decision.backward_transfer)
    assert len(fig.axes[0].get_yticklabels()) == 9


def test_without_a_champion_only_the_floors_apply() -> None:
    golden = _truth(GOLDEN_PER_LABEL)
    # Would fail the per-label check against a champion; with none, only floors are judged.
    candidate = _report(_truth(NEW_PER_LABEL), _with_errors(golden, {10: "intent_3", 11: "intent_3"}))
    decision = decide_gates(candidate, None, POLICY)
    assert decision.passed
    assert [c.name for c in decision.checks] == ["new_macro_f1", "union_macro_f1"]
    assert decision.backward_transfer is None


@pytest.mark.parametrize("with_champion", [False, True])
def test_default_policy_refuses_a_model_trained_on_shuffled_labels(with_champion: bool) -> None:
    # A model trained on shuffled labels has learnt no mapping from text to intent: its predictions
    # are unrelated to the truth. Simulate that with predictions drawn at random.
    rng = random.Random(3)
    new_true, golden_true = _truth(NEW_PER_LABEL), _truth(GOLDEN_PER_LABEL)
    candidate = _report([rng.choice(LABELS) for _ in new_true], [rng.choice(LABELS) for _ in golden_true])
    policy = load_policy(REPO / "registry" / "policy.yaml").gates
    decision = decide_gates(candidate, _champion() if with_champion else None, policy)
    assert not decision.passed
    floor = next(c for c in decision.checks if c.name == "new_macro_f1")
    assert not floor.passed and floor.value is not None and floor.value < 0.3
    assert any(r.startswith("new-data macro-F1") and "below the minimum 0.700" in r for r in decision.reasons)


@dataclasses.dataclass(frozen=True)
class _PlainThresholds:
    """The gate numbers without the registry's pydantic model: the gates need only their shape."""

    min_macro_f1: float = POLICY.min_macro_f1
    min_union_macro_f1: float = POLICY.min_union_macro_f1
    max_golden_regression_points: float = POLICY.max_golden_regression_points
    max_per_label_drop_points: float = POLICY.max_per_label_drop_points
    min_label_support: int = POLICY.min_label_support
    golden_drop_confidence: float = POLICY.golden_drop_confidence


def test_gates_take_plain_thresholds_and_the_registry_policy_alike() -> None:
    # The evaluate stage does not import the registry; `decide_gates(c, b, policy.gates)` still works.
    golden = _truth(GOLDEN_PER_LABEL)
    candidate = _report(_truth(NEW_PER_LABEL), _with_errors(golden, {10: "intent_3", 11: "intent_3"}))
    plain: GateThresholds = _PlainThresholds()
    from_plain = decide_gates(candidate, _champion(), plain)
    from_policy = decide_gates(candidate, _champion(), POLICY)
    assert from_plain == from_policy and not from_plain.passed


def test_a_missing_set_fails_closed() -> None:
    full = _report(_truth(NEW_PER_LABEL), _truth(GOLDEN_PER_LABEL))
    candidate = EvalReport(sets={"new": full.sets["new"]})
    decision = decide_gates(candidate, None, POLICY)
    assert not decision.passed
    assert any("union macro-F1" in r and "no such set" in r for r in decision.reasons)


# --- plots -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_labels", [10, 77])
def test_confusion_matrix_figure_has_a_tick_per_label_and_normalised_rows(n_labels: int) -> None:
    labels = [f"intent_{i:02d}" for i in range(n_labels)]
    rng = random.Random(n_labels)
    y_true = [label for label in labels for _ in range(3)]
    y_pred = [t if rng.random() < 0.8 else rng.choice(labels) for t in y_true]
    fig = confusion_matrix_figure(score(y_true, y_pred, labels), "test")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert len(fig.axes) == 2  # matrix and colour bar
    shares = ax.images[0].get_array()  # a masked array
    assert shares is not None
    assert shares.sum(axis=1).tolist() == pytest.approx([1.0] * n_labels)


def test_per_label_table_and_backward_transfer_figure(tmp_path: Path) -> None:
    golden = _truth(GOLDEN_PER_LABEL)
    candidate = _report(_truth(NEW_PER_LABEL), _with_errors(golden, {10: "intent_3", 11: "intent_3"}))
    champion = _champion()
    table = per_label_table(candidate, champion)
    assert list(table.columns) == [
        "label",
        "support_new",
        "support_golden",
        "f1_new",
        "f1_golden",
        "champion_f1_golden",
        "delta_golden",
    ]
    assert len(table) == len(LABELS)
    row = table.set_index("label").loc["intent_2"]
    assert row["support_golden"] == GOLDEN_PER_LABEL and row["delta_golden"] == pytest.approx(-0.25)

    fig = backward_transfer_figure(candidate, champion, max_drop_points=15.0)
    ax = fig.axes[0]
    assert len(ax.get_yticklabels()) == len(LABELS)
    assert ax.get_yticklabels()[0].get_text() == "intent_2"  # worst first
    path = save_figure(fig, tmp_path / "plots" / "bwt.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- the paired bootstrap: noise passes, forgetting does not (evaluate/uncertainty.py) ---


def test_paired_drop_bound_is_zero_for_two_lost_rows_and_positive_for_three() -> None:
    from tuneloop.evaluate.uncertainty import paired_drop

    golden = _truth(GOLDEN_PER_LABEL)  # 10 labels x 5 rows, the champion right on every row
    two = paired_drop(golden, golden, _with_errors(golden, {0: "intent_5", 1: "intent_5"}), LABELS)
    three = paired_drop(
        golden, golden, _with_errors(golden, {0: "intent_5", 1: "intent_5", 2: "intent_5"}), LABELS
    )
    assert two.drop > 2.0 and two.lower == 0.0 and not two.real  # (48/50)^50 = 13% of resamples miss both
    assert three.drop > two.drop and three.lower > 0.0 and three.real  # (47/50)^50 = 4.5%
    again = paired_drop(golden, golden, _with_errors(golden, {0: "intent_5", 1: "intent_5"}), LABELS)
    assert again == two  # seeded
    with pytest.raises(ValueError):
        paired_drop(golden, golden[:-1], golden, LABELS)


def test_uncertainty_aware_gate_passes_a_small_swing_and_refuses_real_forgetting() -> None:
    policy = POLICY.model_copy(update={"golden_drop_confidence": 0.95, "max_per_label_drop_points": 24.0})
    golden = _truth(GOLDEN_PER_LABEL)
    # Two rows of one label lost (the demo's round 2): over both limits, within noise: passes.
    swing = _report(_truth(NEW_PER_LABEL), _with_errors(golden, {0: "intent_5", 1: "intent_5"}))
    decision = decide_gates(swing, _champion(), policy)
    assert decision.passed, decision.reasons
    regression = next(c for c in decision.checks if c.name == "golden_macro_f1_regression")
    assert regression.value is not None and regression.value > 2.0 and "within noise" in regression.detail
    # The same swing under the point estimate alone is refused: the bootstrap is what lets it pass.
    assert not decide_gates(
        swing, _champion(), POLICY.model_copy(update={"max_per_label_drop_points": 24.0})
    ).passed
    # A forgotten label (all 5 rows) and a spread of 6 lost rows: refused, with the figures.
    forgot = _report(_truth(NEW_PER_LABEL), _with_errors(golden, {i: "intent_9" for i in range(5)}))
    decision = decide_gates(forgot, _champion(), policy)
    assert not decision.passed
    assert any("'intent_0' dropped" in r for r in decision.reasons)
    spread = _report(_truth(NEW_PER_LABEL), _with_errors(golden, {i * 5: "intent_9" for i in range(6)}))
    assert not decide_gates(spread, _champion(), policy).passed
