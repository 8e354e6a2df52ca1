"""A student that serves (issue 25): the conversion weighs the passing students beside the teacher and
publishes the fastest; the service and the MLflow Model answer from it with the teacher's labels; the
next round still continues from the teacher's adapter.

The choice rule is tested on injected figures; the wiring runs on a real tiny version, a real MLflow
store, real ONNX Runtime sessions and a real `tuneloop serve`. The timings inside the conversion are
injected (`_fake_timings`): which of two tiny graphs is faster on a noisy 2-core host is not what
these tests are about, and benchmarks/compress.py measures the real ones on MiniLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.convert.choice import timing_key
from tuneloop.convert.served import ServedFigures, choose_served
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences, make_tiny_bert

LENIENT = {
    "max_abs_logit_diff_fp32": 1.0,
    "int8_max_macro_f1_drop_points": 100,
    "int8_min_argmax_agreement": 0,
}


def _figures(name: str, short_ms: float, passed: bool = True, form: str = "int8") -> ServedFigures:
    return ServedFigures(
        name, form, {"short_t1": short_ms + 1, "short_t2": short_ms, "long_t2": 9 * short_ms}, passed
    )


def test_the_fastest_model_that_passed_serves_and_the_teacher_keeps_ties():
    fp32 = {"short_t1": 11.0, "short_t2": 10.0}
    choice = choose_served([_figures("teacher", 6.0), _figures("4L", 4.5), _figures("3L", 3.5)], fp32)
    assert (choice.chosen, choice.form, choice.threads) == ("3L", "int8", 2)
    assert choice.ratio_to_teacher_fp32 == pytest.approx(0.35)
    assert choice.ratio_to_teacher == pytest.approx(3.5 / 6.0, abs=1e-4)
    assert (
        choice.reasons[0].startswith("3L (int8) serves") and "0.35x the teacher's fp32" in choice.reasons[0]
    )
    assert any(r.startswith("4L (int8): 4.50 ms") for r in choice.reasons)
    tie = choose_served([_figures("teacher", 4.0), _figures("3L", 4.0)], fp32)
    assert tie.chosen == "teacher" and tie.ratio_to_teacher == 1.0


def test_a_student_whose_graphs_failed_parity_never_serves_however_fast():
    fp32 = {"short_t2": 10.0}
    choice = choose_served([_figures("teacher", 6.0), _figures("3L", 1.0, passed=False)], fp32)
    assert choice.chosen == "teacher"
    assert any(r.startswith("3L: conversion failed parity") for r in choice.reasons)
    with pytest.raises(ValueError, match="teacher comes first"):
        choose_served([_figures("3L", 1.0), _figures("teacher", 6.0)], fp32)
    with pytest.raises(ValueError, match="teacher must pass parity"):
        choose_served([_figures("teacher", 6.0, passed=False), _figures("3L", 1.0)], fp32)


def test_only_passed_students_are_weighed():
    from tuneloop.steps.convert_students import passing_students, serves_tag, student_of

    tag = {
        "3": {"path": "students/3L", "passed": True, "sha256": "a"},
        "2": {"path": "students/2L", "passed": False, "sha256": "b"},  # lost a label: refused
        "4": {"path": "students/4L", "passed": True, "sha256": "c"},
    }
    assert list(passing_students({"students": json.dumps(tag)})) == ["3L", "4L"]
    assert passing_students({}) == {}
    assert serves_tag("3L") == "student-3L" and serves_tag("teacher") == "teacher"
    assert student_of("student-3L") == "3L" and student_of("teacher") is None and student_of(None) is None


def _fake_timings(paths, tokenizer, short_text, long_tokens, threads, calls):
    """Injected medians: fp32 10 ms, the teacher's INT8 candidates 6, a student's graphs 3."""
    figures = {}
    for name in paths:
        ms = 10.0 if name in ("fp32", "teacher-fp32") else 3.0 if name.endswith("L") else 6.0
        figures[name] = {
            timing_key(s, t): ms * (1 if s == "short" else 4) for s in ("short", "long") for t in threads
        }
    return figures


def _policy(root: Path, **compress) -> Path:
    policy = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    policy["conversion"] = LENIENT
    policy["compress"] |= compress
    path = root / f"policy-{len(list(root.glob('policy-*')))}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """v1: a 4-layer tiny BERT on three keyword labels, its 2-layer student distilled, converted."""
    from tuneloop.steps.compress import compress_step
    from tuneloop.steps.convert import convert_step
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step

    root = tmp_path_factory.mktemp("compress-serve")
    keyword_sentences(["alpha", "beta", "gamma"], 40, seed=0).to_csv(root / "data.csv", index=False)
    settings = load_settings(
        home=root / "home",
        base_model=str(make_tiny_bert(root / "tiny", hidden_size=128, layers=4)),
        epochs=4,
        **TINY_TRAIN_SETTINGS,
        policy_path=_policy(root, depths=[2], epochs=2, learning_rate=1e-3),
    )
    ingest_step(settings, [root / "data.csv"])
    version = train_step(settings, progress=False)["version"]
    compressed = compress_step(settings, version)
    assert compressed["passed"] == [2], compressed["students"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tuneloop.convert.variants.time_models", _fake_timings)
        patch.setattr("tuneloop.convert.timing.time_models", _fake_timings)
        converted = convert_step(settings, version, tensorrt="off")
    return settings, version, converted, root


def test_the_conversion_publishes_the_students_int8_and_the_tags_say_so(served):
    from tuneloop.registry.store import Registry
    from tuneloop.steps.status import registry_status

    settings, version, converted, _ = served
    s = converted["served"]
    assert s["serves"] == "student-2L" and s["choice"]["chosen"] == "2L" and s["layers"] == [0, 3]
    assert [m["name"] for m in s["models"]] == ["teacher", "2L"]
    assert s["choice"]["ratio_to_teacher_fp32"] == pytest.approx(0.3) and s["students"]["2L"]["parity_passed"]
    info = Registry(settings).get_version(version)
    assert info.tags["serves"] == "student-2L" and info.tags["conversion"] == "passed"
    assert info.tags["int8_serve"] == "int8"  # the student's own INT8 beat its fp32 (injected 6 vs 10 ms)
    # The published graphs are the student's: 2 encoder layers, so fewer nodes than the teacher's 4.
    run = Registry(settings).client.get_run(info.run_id).info.artifact_uri.removeprefix("file://")
    published = Path(run) / info.tags["conversion_path"]
    import onnx

    from tuneloop.files import sha256_file

    assert sha256_file(published / "model.int8.onnx") == info.tags["int8_sha256"]
    graph = onnx.load(str(published / "model.opt.onnx"))
    layers = {n.name.split("/")[3] for n in graph.graph.node if n.name.startswith("/bert/encoder/layer.")}
    assert layers == {"layer.0", "layer.1"}
    assert "**Serves student-2L** (int8)" in (published / "parity.md").read_text()
    row = next(v for v in registry_status(settings)["versions"] if v["version"] == version)
    assert row["serves"] == "student-2L int8"


def _student_int8(settings, version: str, texts: list[str]) -> np.ndarray:
    """Probabilities of the published INT8 graph (the student's) run directly, with merged/'s tokenizer."""
    from tuneloop.registry.store import Registry
    from tuneloop.serve.backends import OnnxPredictor

    registry = Registry(settings)
    info = registry.get_version(version)
    run = registry.client.get_run(info.run_id).info.artifact_uri.removeprefix("file://")
    graph = Path(run) / info.tags["conversion_path"] / "model.int8.onnx"
    merged = Path(run) / "model" / "merged"
    return OnnxPredictor(graph, info.tags["int8_sha256"], merged, 1, 64).predict_proba(texts)


@pytest.mark.e2e
def test_tuneloop_serve_and_the_mlflow_model_answer_from_the_student(served):
    import tuneloop.model
    from tuneloop.demo.service import DemoService
    from tuneloop.serve.backends import TorchPredictor
    from tuneloop.steps.release import approve_step, promote_step

    settings, version, _, root = served
    approve_step(settings, version, by="test")
    promote_step(settings, version, reason="test: a student-serving champion", by="test")
    texts = ["alpha alpha words here", "beta beta words", "gamma gamma gamma", "alpha beta"]
    expected = _student_int8(settings, version, texts)
    labels = ["alpha", "beta", "gamma"]  # the teacher's, in its id2label order
    with DemoService(settings) as service:
        service.wait_ready(version)
        status = httpx.get(f"{service.url}/status", timeout=10).json()
        champion = status["aliases"]["champion"]
        assert (champion["version"], champion["model"], champion["backend"]) == (
            version,
            "student-2L",
            "onnx-int8",
        )
        assert any("torch: the version serves its student-2L" in n for n in champion["notes"])
        answer = httpx.post(f"{service.url}/classify", json={"texts": texts}, timeout=30).json()
    got = [r["label"] for r in answer["predictions"]]
    assert got == [labels[i] for i in expected.argmax(axis=1)]
    scores = [r["score"] for r in answer["predictions"]]
    assert scores == pytest.approx(expected.max(axis=1).tolist(), abs=1e-4)
    # And not the teacher's answers: its PyTorch probabilities differ from what was served.
    from tuneloop.registry.store import Registry

    teacher = TorchPredictor(
        Registry(settings).download(version, "merged", root / "teacher", verify=True), 1, 64
    )
    assert np.abs(teacher.predict_proba(texts) - expected).max() > 1e-3

    model = tuneloop.model.load(f"models:/{settings.model_name}/{version}", root / "pyfunc")
    frame = model.predict(texts)
    assert frame["label"].tolist() == got
    assert frame["score"].tolist() == pytest.approx(scores, abs=1e-4)


def test_the_next_round_continues_from_the_teacher_never_the_student(served):
    from tuneloop.registry.store import Registry
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step

    settings, version, _, root = served
    registry = Registry(settings)
    if registry.alias("champion") is None or registry.alias("champion").version != version:
        from tuneloop.steps.release import approve_step, promote_step

        approve_step(settings, version, by="test")
        promote_step(settings, version, reason="test", by="test")
    teacher = registry.get_version(version)
    assert teacher.tags["serves"] == "student-2L"
    keyword_sentences(["alpha", "beta", "gamma"], 20, seed=1).to_csv(root / "more.csv", index=False)
    ingest_step(settings, [root / "more.csv"])
    trained = train_step(settings, progress=False)
    child = registry.get_version(trained["version"])
    assert child.tags["parent_version"] == version
    # Built on the teacher: the child's merged model has the teacher's 4 layers, not the student's 2,
    # and the round downloaded the teacher's adapter (the student has none: it is full weights).
    config = registry.download(child.version, "merged/config.json", root / "child", verify=True)
    assert json.loads(Path(config).read_text())["num_hidden_layers"] == 4
    assert "students" not in child.tags and "serves" not in child.tags


def test_a_pinned_conversion_rebuilds_the_served_student_without_timing(served, monkeypatch):
    """What `tuneloop restore` asks for: the model the version published, not a new race."""
    from tuneloop.registry.store import Registry
    from tuneloop.steps.convert import convert_step

    settings, version, _, _ = served
    before = Registry(settings).get_version(version).tags

    def no_timing(*_a, **_k):
        raise AssertionError("a pinned conversion times nothing between teacher and students")

    monkeypatch.setattr("tuneloop.convert.timing.time_models", no_timing)
    monkeypatch.setattr("tuneloop.convert.variants.time_models", _fake_timings)
    again = convert_step(settings, version, tensorrt="off", serves="student-2L")
    after = Registry(settings).get_version(version).tags
    assert again["served"]["pinned"] and after["serves"] == "student-2L"
    assert after["conversion_key"] != before["conversion_key"]  # the pin is part of the key
    assert after["onnx_opt_sha256"] == before["onnx_opt_sha256"]  # the same student's fp32 graph
    with pytest.raises(Exception, match="no passing 3L student"):
        convert_step(settings, version, tensorrt="off", serves="student-3L")
