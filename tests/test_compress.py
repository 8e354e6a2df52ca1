"""Depth students (issue 25): which layers a student keeps, that it starts as the teacher's layers,
that distillation brings it towards the teacher, that the judge refuses a student losing a label,
and the whole step on a registered tiny version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tuneloop.compress import (
    DistillConfig,
    Predictions,
    StudentLimits,
    build_depth_student,
    choose_layers,
    distill,
    judge_student,
    kl_to_teacher,
    load_teacher,
    predict_logits,
    save_student,
)
from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences, make_tiny_bert

LABELS = ["alpha", "beta", "gamma", "delta"]
LIMITS = StudentLimits(
    max_f1_drop_points=1.0, min_agreement=0.92, max_per_label_drop_points=24.0, min_label_support=5
)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A 4-layer tiny classifier folder in merge_adapter's layout (weights, id2label, tokenizer, labels)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root = tmp_path_factory.mktemp("teacher")
    base = make_tiny_bert(root / "base", hidden_size=32, layers=4)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
    )
    # At BERT's initial scale (std 0.02) attention is nearly uniform and every text gets about the
    # same logits, leaving a student nothing to match (KL ~1e-6): at std 0.2 the logits depend on the
    # text and dropping two layers changes them (KL ~0.2).
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=0.2)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    out = root / "merged"
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    (out / "labels.json").write_text(json.dumps(LABELS))
    return out


@pytest.mark.parametrize(
    ("teacher", "depth", "layers"),
    [
        (6, 4, [0, 2, 3, 5]),  # MiniLM-L6 -> 4
        (6, 3, [0, 2, 5]),
        (6, 2, [0, 5]),
        (6, 1, [5]),  # the one layer left is the classifier's input
        (12, 6, [0, 2, 4, 7, 9, 11]),  # DistilBERT's choice from BERT-base
        (4, 2, [0, 3]),
        (4, 3, [0, 2, 3]),
    ],
)
def test_layers_are_spread_evenly_keeping_first_and_last(teacher, depth, layers):
    assert choose_layers(teacher, depth) == layers


@pytest.mark.parametrize(("teacher", "depth"), [(6, 6), (6, 7), (6, 0), (1, 1)])
def test_a_student_must_drop_at_least_one_layer_and_keep_one(teacher, depth):
    with pytest.raises(ValueError):
        choose_layers(teacher, depth)


def test_a_student_starts_as_the_teachers_chosen_layers(teacher_dir, tmp_path):
    teacher, tokenizer, labels = load_teacher(teacher_dir)
    kept = choose_layers(4, 2)
    student = build_depth_student(teacher, kept)
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for new, old in enumerate(kept):
        ours = student.bert.encoder.layer[new].state_dict()
        theirs = teacher.bert.encoder.layer[old].state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), (new, old)
    # The dropped layers' weights are nowhere in the student (layer 1 differs from both kept ones).
    dropped = teacher.bert.encoder.layer[1].attention.self.query.weight
    assert not any(
        torch.equal(dropped, layer.attention.self.query.weight) for layer in student.bert.encoder.layer
    )
    for name in ("bert.embeddings", "bert.pooler", "classifier"):
        ours, theirs = student.get_submodule(name).state_dict(), teacher.get_submodule(name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name

    folder = save_student(student, teacher_dir, tmp_path / "student", kept, 4)
    assert json.loads((folder / "labels.json").read_text()) == LABELS
    assert json.loads((folder / "student.json").read_text()) == {"teacher_layers": 4, "layers": [0, 3]}
    reloaded, _, reloaded_labels = load_teacher(folder)
    assert reloaded_labels == LABELS and reloaded.config.id2label[3] == "delta"
    texts = ["apple banana", "river ocean valley"]
    assert (predict_logits(reloaded, tokenizer, texts) == predict_logits(student, tokenizer, texts)).all()


def test_distillation_brings_the_student_towards_the_teacher(teacher_dir):
    teacher, tokenizer, labels = load_teacher(teacher_dir)
    rows = keyword_sentences(LABELS, 12, seed=1)
    texts = rows["text"].tolist()
    ids = [labels.index(x) for x in rows["label"]]
    soft = predict_logits(teacher, tokenizer, texts)
    kept = choose_layers(4, 2)
    student = build_depth_student(teacher, kept)
    before = kl_to_teacher(predict_logits(student, tokenizer, texts), soft)
    # alpha 1: the teacher's scores alone.
    cfg = DistillConfig(epochs=3, learning_rate=2e-3, temperature=2.0, alpha=1.0, batch_size=8, seed=0)
    result = distill(student, tokenizer, texts, ids, soft, cfg)
    after = kl_to_teacher(predict_logits(student, tokenizer, texts), soft)
    assert result.steps == 3 * 6 and len(result.epoch_losses) == 3
    assert after < 0.5 * before, (before, after)

    # The hidden-state term runs beside it and needs the teacher to run.
    with_hidden = DistillConfig(epochs=1, learning_rate=1e-3, temperature=2.0, alpha=0.5, hidden_weight=1.0)
    with pytest.raises(ValueError, match="hidden_weight"):
        distill(student, tokenizer, texts, ids, soft, with_hidden)
    assert distill(student, tokenizer, texts, ids, soft, with_hidden, teacher=teacher, layers=kept).steps == 2


def _rows(per_label: int = 100) -> list[str]:
    return [label for label in LABELS for _ in range(per_label)]


def test_the_judge_passes_a_student_within_the_limits():
    truth = _rows()
    teacher = list(truth)
    teacher[0] = "beta"  # the teacher gets one row wrong
    student = list(teacher)
    student[150] = "gamma"  # the student one more: 0.25 points of macro-F1 on 400 rows
    verdict = judge_student({"eval": Predictions(truth, teacher, student)}, LIMITS)
    assert verdict.passed and verdict.reasons == []
    figures = verdict.sets["eval"]
    assert figures["agreement"] == pytest.approx(399 / 400)
    assert 0 < figures["macro_f1_drop_points"] < 1.0 and figures["labels_judged"] == 4


def test_the_judge_refuses_a_student_that_loses_a_label():
    truth = _rows(5)  # 5 golden rows each: every label judged at min_label_support 5
    student = ["alpha" if label == "delta" else label for label in truth]
    verdict = judge_student({"golden": Predictions(truth, list(truth), student)}, LIMITS)
    assert not verdict.passed
    assert verdict.sets["golden"]["per_label_drop_points"]["delta"] == 100.0
    assert any("'delta' lost 100.0 points" in reason for reason in verdict.reasons)
    assert any("agrees with the teacher on 0.7500" in reason for reason in verdict.reasons)


def test_the_judge_refuses_a_student_that_answers_otherwise_even_when_it_scores_better():
    truth = _rows()
    # 90% right: every tenth row answered with the next label.
    teacher = [LABELS[(LABELS.index(x) + 1) % 4] if i % 10 == 0 else x for i, x in enumerate(truth)]
    verdict = judge_student({"eval": Predictions(truth, teacher, list(truth))}, LIMITS)
    assert verdict.sets["eval"]["macro_f1_drop_points"] < 0  # better than its teacher...
    assert verdict.reasons == ["eval: agrees with the teacher on 0.9000 of 400 rows (at least 0.92 needed)"]


def test_the_judge_needs_rows():
    empty = Predictions([], [], [])
    assert judge_student({"eval": empty}, LIMITS).reasons == ["no rows to judge the student on"]
    with pytest.raises(ValueError, match="one label per row"):
        judge_student({"eval": Predictions(["alpha"], [], ["alpha"])}, LIMITS)


def _policy(folder: Path, **compress) -> Path:
    policy = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    policy["compress"] |= compress
    path = folder / f"policy-{len(list(folder.glob('policy-*')))}.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A version of a 4-layer hidden-128 tiny BERT trained on three keyword labels (seconds)."""
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step

    root = tmp_path_factory.mktemp("compress-step")
    keyword_sentences(["alpha", "beta", "gamma"], 40, seed=0).to_csv(root / "data.csv", index=False)
    settings = load_settings(
        home=root / "home",
        base_model=str(make_tiny_bert(root / "tiny", hidden_size=128, layers=4)),
        epochs=4,
        **TINY_TRAIN_SETTINGS,
        policy_path=_policy(root, depths=[4, 3, 2], epochs=2, learning_rate=1e-3),
    )
    ingest_step(settings, [root / "data.csv"])
    version = train_step(settings, progress=False)["version"]
    return settings, version, root


@pytest.fixture(scope="module")
def compressed(trained):
    from tuneloop.steps.compress import compress_step

    settings, version, _ = trained
    return compress_step(settings, version)


def test_compress_step_distils_and_judges_each_depth(trained, compressed):
    settings, version, _ = trained
    r = compressed
    assert r["version"] == version and r["published"] is False  # recorded, not served
    # 3 labels x 40 rows, 80% trained on; a first round replays nothing.
    assert r["rows"]["replay"] == 0 and r["rows"]["train"] > 0 and r["rows"]["golden"] > 0
    teacher = r["teacher"]
    assert teacher["layers"] == 4 and set(teacher["macro_f1"]) == {"eval", "golden"}
    by_depth = {s["depth"]: s for s in r["students"]}
    assert by_depth[4] == {"depth": 4, "skipped": "the teacher has 4 layers: nothing to drop"}
    assert by_depth[3]["layers"] == [0, 2, 3] and by_depth[2]["layers"] == [0, 3]
    for depth in (3, 2):
        s = by_depth[depth]
        assert s["params"] < teacher["params"] and s["bytes"] < teacher["bytes"]
        assert s["params_over_teacher"] < 1
        assert set(s["macro_f1"]) == {"eval", "golden"} and set(s["agreement"]) == {"eval", "golden"}
        for name, scores in s["macro_f1"].items():
            assert scores["teacher"] == pytest.approx(teacher["macro_f1"][name], abs=1e-6)
        assert isinstance(s["passed"], bool) and s["passed"] == (s["reasons"] == [])
        assert s["distill"]["steps"] > 0 and s["seconds"] > 0
        folder = _stored(settings, version, s["recorded"]["path"])  # the scratch copy is gone
        assert json.loads((folder / "student.json").read_text())["layers"] == s["layers"]
        config = json.loads((folder / "config.json").read_text())
        assert config["num_hidden_layers"] == depth
        assert sorted(config["id2label"].values()) == ["alpha", "beta", "gamma"]
    # Keyword sentences are easy: a 3-layer student of a teacher that learnt them keeps them.
    assert 3 in r["passed"]


def _stored(settings, version: str, path: str) -> Path:
    """The folder of a version's run artifacts at `path` in the local artifact store."""
    from tuneloop.registry.store import Registry

    registry = Registry(settings)
    run_id = registry.get_version(version).run_id
    uri = registry.client.get_run(run_id).info.artifact_uri
    return Path(uri.removeprefix("file://")) / path


def test_compress_step_records_each_student_on_its_version(trained, compressed, tmp_path):
    import hashlib

    from tuneloop.files import sha256_file
    from tuneloop.registry.store import Registry
    from tuneloop.steps.students import read_students_tag

    settings, version, _ = trained
    tag = read_students_tag(Registry(settings).get_version(version).tags)
    by_depth = {s["depth"]: s for s in compressed["students"]}
    assert set(tag) == {"3", "2"}  # depth 4 was skipped: nothing built, nothing recorded
    for depth in (3, 2):
        entry, student = tag[str(depth)], by_depth[depth]
        assert entry == student["recorded"] and entry["path"] == f"students/{depth}L"
        assert entry["passed"] == student["passed"] and entry["layers"] == student["layers"]
        assert 0 <= entry["agreement"] <= 1 and entry["macro_f1_drop"] is not None
        folder = _stored(settings, version, entry["path"])
        data = (folder / "checksums.json").read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        sums = json.loads(data)
        stored = {p.name: sha256_file(p) for p in folder.iterdir() if p.name != "checksums.json"}
        assert sums["files"] == stored
        assert {"model.safetensors", "config.json", "labels.json", "student.json", "judgement.json"} <= set(
            stored
        )
        # The tokenizer is the teacher's byte for byte: stored once, in model/merged/. So are the
        # frozen word embeddings: the stored weights hold every other tensor, not that one.
        assert "tokenizer.json" in sums["from_merged"] and not set(sums["from_merged"]) & set(stored)
        embeddings = "bert.embeddings.word_embeddings.weight"
        assert list(sums["from_merged_tensors"]) == [embeddings]
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
            kept = set(weights.keys())
        assert embeddings not in kept and "classifier.weight" in kept
        judgement = json.loads((folder / "judgement.json").read_text())
        assert judgement["passed"] == student["passed"] and judgement["reasons"] == student["reasons"]
        assert judgement["layers"] == student["layers"] and "sets" in judgement["verdict"]


def test_download_student_verifies_every_file_and_refuses_a_tampered_one(trained, compressed, tmp_path):
    from tuneloop.registry.store import RegistryError
    from tuneloop.steps.compress import download_student

    settings, version, _ = trained
    folder = download_student(settings, version, 3, tmp_path / "ok")
    model, tokenizer, labels = load_teacher(folder)  # the tokenizer came from model/merged/
    assert labels == ["alpha", "beta", "gamma"] and model.config.num_hidden_layers == 3
    assert (folder / "tokenizer.json").is_file() and not (folder / ".merged").exists()

    stored = _stored(settings, version, "students/3L")
    for name, match in [("model.safetensors", "model.safetensors: sha256"), ("checksums.json", "the tag")]:
        original = (stored / name).read_bytes()
        (stored / name).write_bytes(original + b" ")
        try:
            with pytest.raises(RegistryError, match=match):
                download_student(settings, version, 3, tmp_path / name)
            assert not (tmp_path / name / "3L").exists()  # the refused download was deleted
        finally:
            (stored / name).write_bytes(original)
    with pytest.raises(RegistryError, match="no recorded 1-layer student"):
        download_student(settings, version, 1, tmp_path / "none")


def test_rerunning_compress_records_to_a_fresh_folder_and_records_a_refused_student(trained, compressed):
    from tuneloop.registry.store import Registry
    from tuneloop.steps.compress import compress_step, download_student
    from tuneloop.steps.students import read_students_tag

    settings, version, root = trained
    before = read_students_tag(Registry(settings).get_version(version).tags)
    first = _stored(settings, version, "students/2L")
    files_before = {p.name: p.read_bytes() for p in first.iterdir()}
    # A student that must answer exactly as its teacher, after one epoch at a ruinous learning rate.
    strict = _policy(root, depths=[2], epochs=1, learning_rate=0.5, min_agreement=1.0, max_f1_drop_points=0)
    again = compress_step(settings.model_copy(update={"policy_path": strict}), version)
    (student,) = again["students"]
    assert not student["passed"] and student["reasons"]
    tag = read_students_tag(Registry(settings).get_version(version).tags)
    assert tag["2"] == student["recorded"] and tag["2"]["path"] == "students/2L.2"
    assert tag["2"]["passed"] is False
    assert tag["3"] == before["3"]  # a depth not rebuilt keeps its entry
    assert {p.name: p.read_bytes() for p in first.iterdir()} == files_before  # never written into
    judgement = json.loads((_stored(settings, version, "students/2L.2") / "judgement.json").read_text())
    assert judgement["passed"] is False and judgement["reasons"] == student["reasons"]
    assert load_teacher(download_student(settings, version, 2))[0].config.num_hidden_layers == 2


def test_compress_command_prints_json_and_refuses_a_policy_without_the_section(trained, monkeypatch):
    from tuneloop.cli import app

    settings, version, root = trained
    policy = yaml.safe_load(settings.policy_path.read_text())
    monkeypatch.setenv("TUNELOOP_HOME", str(settings.home_dir))
    monkeypatch.setenv("TUNELOOP_BASE_MODEL", settings.base_model)
    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    # Only a depth the teacher cannot go below: the command runs the step without distilling.
    monkeypatch.setenv("TUNELOOP_POLICY_PATH", str(_policy(root, depths=[4])))
    result = CliRunner().invoke(app, ["compress", version, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["version"] == version and summary["students"][0]["skipped"]

    del policy["compress"]
    bare = root / "no-compress.yaml"
    bare.write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("TUNELOOP_POLICY_PATH", str(bare))
    result = CliRunner().invoke(app, ["compress", version])
    assert result.exit_code == 2 and "no `compress` section" in " ".join(result.output.split())


def test_width_pruning_removes_whole_ffn_neurons_and_the_student_saves_and_loads(teacher_dir, tmp_path):
    from tuneloop.compress import count_parameters, prune_ffn

    teacher, tokenizer, labels = load_teacher(teacher_dir)
    student = build_depth_student(teacher, [0, 3])
    texts = _rows(20)
    soft = predict_logits(teacher, tokenizer, texts)
    before_params, width = count_parameters(student), student.config.intermediate_size
    ffn = prune_ffn(student, tokenizer, texts, soft, 0.5, batch_size=8)
    assert ffn == {"before": width, "after": width // 2}
    for layer in student.bert.encoder.layer:  # dense, smaller: not a mask over the old shapes
        assert layer.intermediate.dense.weight.shape == (width // 2, student.config.hidden_size)
        assert layer.output.dense.weight.shape == (student.config.hidden_size, width // 2)
        assert layer.attention.self.query.out_features == student.config.hidden_size  # heads kept
    assert count_parameters(student) < before_params
    logits = predict_logits(student, tokenizer, texts)
    folder = save_student(student, teacher_dir, tmp_path / "pruned", [0, 3], 4)
    again, _, again_labels = load_teacher(folder)
    assert again.config.intermediate_size == width // 2 and again_labels == labels
    assert np.allclose(predict_logits(again, tokenizer, texts), logits, atol=1e-5)
    # The importance is the data's: the neurons kept on other rows are not the same ones.
    other = build_depth_student(teacher, [0, 3])
    flipped = [t[::-1] + " zz" for t in texts]
    prune_ffn(
        other, tokenizer, flipped, predict_logits(teacher, tokenizer, flipped), 0.5, batch_size=8, seed=1
    )
    first = student.bert.encoder.layer[0].intermediate.dense.weight
    assert not torch.equal(first, other.bert.encoder.layer[0].intermediate.dense.weight)
    with pytest.raises(ValueError, match="keep must be"):
        prune_ffn(other, tokenizer, texts, soft, 0.0)


def test_compress_step_builds_a_pruned_student_when_the_policy_asks(trained):
    from tuneloop.registry.store import Registry
    from tuneloop.steps.compress import compress_step, download_student
    from tuneloop.steps.students import read_students_tag

    settings, version, root = trained
    policy = _policy(root, depths=[1], epochs=1, learning_rate=1e-3, ffn_keep=0.5)
    r = compress_step(settings.model_copy(update={"policy_path": policy}), version)
    (student,) = r["students"]
    width = student["ffn"]["before"]
    assert student["ffn"] == {"before": width, "after": width // 2}
    assert read_students_tag(Registry(settings).get_version(version).tags)["1"]["ffn"] == width // 2
    model, _, _ = load_teacher(download_student(settings, version, 1))
    assert model.config.intermediate_size == width // 2 and model.config.num_hidden_layers == 1
