"""benchmarks/train.py compares LoRA and the full fine-tune under one epoch selection: the round's own.

The LoRA round tests its best eval epoch and stops after `patience` epochs without a better one; the
full fine-tune in the benchmark used to test its last epoch. `BestEpoch` is the rule the benchmark's
full fine-tune now follows; replaying a real round's eval history through it must land on the epoch
the round kept and stop where the round stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.train import BestEpoch


def replay(f1s: list[float], patience: int) -> tuple[int, int]:
    """(best epoch, epochs run) under BestEpoch for a sequence of eval macro-F1."""
    selector = BestEpoch(patience)
    for epoch, f1 in enumerate(f1s, start=1):
        selector.update(epoch, f1)
        if selector.stopped:
            return selector.best_epoch, epoch
    return selector.best_epoch, len(f1s)


def test_best_epoch_is_kept_and_patience_stops() -> None:
    # Epoch 2 is best; 3 and 4 do not beat it (a tie is not better), so patience 2 stops after 4.
    assert replay([0.50, 0.70, 0.60, 0.70, 0.90], patience=2) == (2, 4)
    assert replay([0.50, 0.70, 0.60, 0.70, 0.90], patience=3) == (5, 5)
    assert replay([0.1, 0.2, 0.3], patience=1) == (3, 3)


def test_the_rule_is_the_lora_rounds_own(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from tuneloop.testing import keyword_sentences, make_tiny_bert
    from tuneloop.train import TrainConfig, train_round

    torch.set_num_threads(1)
    labels = ["alpha", "beta", "gamma"]
    train, held = keyword_sentences(labels, 4, seed=1), keyword_sentences(labels, 2, seed=2)
    cfg = TrainConfig(
        base_model=str(make_tiny_bert(tmp_path / "tiny")),
        lora_r=4,
        lora_alpha=8,
        learning_rate=1e-2,
        epochs=6,
        batch_size=4,
        patience=2,
        modules_to_save=(),
        seed=5,
    )
    result = train_round(train, held, labels, tmp_path / "round", cfg, progress=False)
    f1s = [record["eval_macro_f1"] for record in result.history]
    assert replay(f1s, cfg.patience) == (result.best_epoch, result.epochs_run)
