"""One training round: a plain PyTorch loop over a LoRA classifier, early stopping on eval macro-F1.

Deterministic for a given seed on one device: the model is initialised right after seeding, and at
the start of every epoch e the shuffle and dropout draw from generators seeded with (seed, e), so a
run resumed after epoch e produces the same weights as one that never stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tuneloop.progress import progress_bar
from tuneloop.train.base import BaseModelAllowance, resolve_base_model
from tuneloop.train.checkpoint import (
    RunState,
    load_checkpoint,
    load_trainable,
    save_checkpoint,
    trainable_tensors,
)
from tuneloop.train.config import TrainConfig
from tuneloop.train.model import build_classifier, write_adapter
from tuneloop.train.predict import predict_logits

WARMUP_SHARE = 0.06  # linear warm-up over the first 6% of steps, then linear decay to 0
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


@dataclass
class TrainResult:
    """What a round produced. `history` has one entry per finished epoch, resumed ones included."""

    adapter_dir: Path
    labels: list[str]
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]]
    steps: int
    train_seconds: float
    trainable_params: int
    total_params: int
    resumed_from_epoch: int | None
    device: str

    @property
    def best(self) -> dict[str, float]:
        """The history entry of the best epoch."""
        return self.history[self.best_epoch - 1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self) | {"adapter_dir": str(self.adapter_dir)}


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; asking for 'cuda' without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device; use device='auto' or 'cpu'.")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compute_macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro-F1 over the labels present in `y_true` (a label absent from eval cannot be scored)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0))


def train_round(
    train_df: pd.DataFrame,
    eval_df: pd.DataFrame,
    labels: Sequence[str],
    out_dir: Path,
    cfg: TrainConfig,
    parent_adapter: Path | None = None,
    progress: bool = True,
    *,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train one LoRA round on `train_df` (text, label), early-stopping on `eval_df`, and save it.

    Writes `out_dir/adapter/` (atomically) and keeps `out_dir/checkpoints/last/`; calling again with
    the same out_dir and inputs resumes after the last finished epoch. `labels` is this round's label
    set; with a parent, the head keeps the parent's labels first (see `build_classifier`).
    `on_epoch_end` is called with each epoch's record after its checkpoint is written.
    """
    if train_df.empty or eval_df.empty:
        raise ValueError("train_round needs rows in both train_df and eval_df (eval drives early stopping).")
    out_dir = Path(out_dir)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model, tokenizer, final = build_classifier(cfg, labels, parent_adapter)
    index = {name: i for i, name in enumerate(final)}
    y_train, y_eval = (_label_ids(df, index) for df in (train_df, eval_df))
    texts = train_df["text"].astype(str).tolist()
    eval_texts = eval_df["text"].astype(str).tolist()
    model.to(device)
    # Before any step (and before a checkpoint is loaded) the model is the parent on its old labels.
    teacher = _teacher_logits(model, tokenizer, texts, cfg, parent_adapter)
    class_weight = _label_weights(y_train, len(final), device) if cfg.balance_labels else None

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
    epochs = round_epochs(cfg, continued=parent_adapter is not None)
    # e.g. 1,232 rows / 32 = 39 steps an epoch x 8 epochs = 312 steps, 19 of them warm-up.
    per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total = per_epoch * epochs
    warmup = max(1, math.ceil(WARMUP_SHARE * total))

    def lr_at(step: int) -> float:
        # `step` counts finished steps, so the first step already runs at lr / warmup, not at 0.
        scale = (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
        return cfg.learning_rate * scale

    fingerprint = _fingerprint(cfg, final, parent_adapter, texts, y_train, eval_texts, y_eval)
    ckpt_root = out_dir / "checkpoints"
    loaded = load_checkpoint(ckpt_root, fingerprint, model, optimizer)
    state, best = loaded if loaded else (RunState(fingerprint), trainable_tensors(model))
    resumed_from = state.epoch if loaded else None

    started = time.perf_counter()
    with progress_bar(progress) as bar:
        for epoch in range(state.epoch + 1, epochs + 1):
            if state.stopped:
                break
            tick = time.perf_counter()
            torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout draws of this epoch
            order = torch.randperm(
                len(texts), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            )
            task = bar.add_task(f"epoch {epoch}/{epochs}", total=per_epoch, loss=float("nan"))
            batches = [order[i : i + cfg.batch_size].tolist() for i in range(0, len(texts), cfg.batch_size)]
            losses: list[float] = []
            model.train()
            for rows in batches:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(state.step)
                batch = tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=cfg.max_length,
                    return_tensors="pt",
                ).to(device)
                target = torch.as_tensor(y_train[rows], device=device)
                soft = None if teacher is None else teacher[rows].to(device)
                losses.append(_step(model, batch, target, optimizer, soft, cfg, class_weight))
                state.step += 1
                bar.update(task, advance=1, loss=float(np.mean(losses[-10:])))
            step_seconds = (time.perf_counter() - tick) / len(batches)
            record = _evaluate(model, tokenizer, eval_texts, y_eval, cfg.max_length)
            record = {"epoch": epoch, "train_loss": float(np.mean(losses))} | record
            record["step_seconds"] = round(step_seconds, 4)
            record["seconds"] = round(time.perf_counter() - tick, 3)
            state.history.append(record)
            state.epoch = epoch
            if record["eval_macro_f1"] > state.best_f1:
                state.best_f1, state.best_epoch, state.bad_epochs = record["eval_macro_f1"], epoch, 0
                best = trainable_tensors(model)
            else:
                state.bad_epochs += 1
                state.stopped = state.bad_epochs >= cfg.patience
            save_checkpoint(ckpt_root, state, model, best, optimizer)
            if progress:
                bar.console.print(_describe(record, state))
            if on_epoch_end is not None:
                on_epoch_end(record)
    seconds = time.perf_counter() - started

    load_trainable(model, best)
    meta = {
        "base_model": cfg.base_model,
        "base_path": resolve_base_model(cfg.base_model, BaseModelAllowance.of(cfg.base_model)),
        "train_config": cfg.to_dict(),
        "parent_adapter": str(parent_adapter) if parent_adapter else None,
        "best_epoch": state.best_epoch,
        "history": state.history,
    }
    adapter_dir = write_adapter(model.cpu(), tokenizer, final, out_dir / "adapter", meta)
    trainable, total_params = model.get_nb_trainable_parameters()
    return TrainResult(
        adapter_dir=adapter_dir,
        labels=final,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        history=state.history,
        steps=state.step,
        train_seconds=round(seconds, 3),
        trainable_params=int(trainable),
        total_params=int(total_params),
        resumed_from_epoch=resumed_from,
        device=str(device),
    )


def round_epochs(cfg: TrainConfig, continued: bool) -> int:
    """The most epochs a round runs: `epochs`, or `continued_epochs` (at most `epochs`) with a parent.

    A continued round's cost grows with its rows: on BANKING77 at 77 intents, 7 new intents x 28
    rows + 70 old ones x 15 replayed rows = 1,246 rows against round 1's 30 x 28 = 840. At 8 epochs
    that is 1.48x round 1's row-epochs; at 6, 1,246 x 6 / (840 x 8) = 1.11x. The schedule decays to
    0 over these epochs, so the round ends annealed instead of being cut off mid-schedule.
    """
    return min(cfg.epochs, cfg.continued_epochs) if continued else cfg.epochs


def _teacher_logits(
    model: Any, tokenizer: Any, texts: list[str], cfg: TrainConfig, parent: Path | None
) -> torch.Tensor | None:
    """The parent's logits over its own labels for every training row, or None (no parent, or off).

    Learning without Forgetting (Li & Hoiem, 2016): a continued round also matches the parent's
    softened scores over the old labels, on new and replayed rows alike. Replay keeps a few rows per
    old label; the parent's scores carry what it knew about all of them on every row, for one
    inference pass (about a third of one epoch's cost). The model is the parent here: `build_classifier`
    copied its weights, and the old labels' head rows come first (`merge_labels`).
    """
    if parent is None or cfg.distill_weight == 0:
        return None
    from tuneloop.train.model import read_labels

    old = len(read_labels(parent))
    logits = predict_logits(model, tokenizer, texts, max_length=cfg.max_length)
    return torch.from_numpy(logits[:, :old].copy())


def _label_weights(y: np.ndarray, n_labels: int, device: torch.device) -> torch.Tensor:
    """Cross-entropy weight per label: n_rows / (n_labels present x rows of the label); 0 if absent.

    Every label present then carries the same total weight. BANKING77 round 2 (issue 14): 10 new
    labels x 28 rows and 30 old labels x 15 replayed rows = 730 rows; a new label's row weighs
    730 / (40 x 28) = 0.65, an old one's 730 / (40 x 15) = 1.22. Unweighted, the new labels held
    280 / 730 = 38% of the loss for 25% of the labels, and the round answered new labels for old
    labels' texts. Equal counts (a first round) give every row weight 1: plain cross-entropy.
    """
    counts = np.bincount(y, minlength=n_labels).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_labels)
    weights[present] = len(y) / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32, device=device)


def _step(
    model: Any,
    batch: Any,
    target: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    teacher: torch.Tensor | None = None,
    cfg: TrainConfig | None = None,
    class_weight: torch.Tensor | None = None,
) -> float:
    """One optimizer step on one batch; returns the batch loss (cross-entropy, plus distillation)."""
    logits = model(**batch).logits.float()
    # "sum / rows" rather than PyTorch's weighted mean (which divides by the batch's total weight):
    # a batch that happens to hold many rows of one label keeps that label's share small.
    if class_weight is None:
        loss = F.cross_entropy(logits, target)
    else:
        loss = F.cross_entropy(logits, target, weight=class_weight, reduction="sum") / len(target)
    if teacher is not None and cfg is not None:
        # KL(teacher || student) over the old labels at temperature T, scaled by T^2 so its gradients
        # keep the size of the cross-entropy's as T changes (Hinton et al., 2015).
        t = cfg.distill_temperature
        student = F.log_softmax(logits[:, : teacher.shape[1]] / t, dim=-1)
        kd = F.kl_div(student, F.log_softmax(teacher / t, dim=-1), log_target=True, reduction="batchmean")
        loss = loss + cfg.distill_weight * t * t * kd
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())


def _label_ids(frame: pd.DataFrame, index: dict[str, int]) -> np.ndarray:
    unknown = sorted(set(frame["label"].astype(str)) - set(index))
    if unknown:
        raise ValueError(
            f"rows carry labels {unknown[:5]} missing from `labels`; pass every label of the round."
        )
    return np.array([index[x] for x in frame["label"].astype(str)], dtype=np.int64)


def _evaluate(
    model: Any, tokenizer: Any, texts: list[str], y: np.ndarray, max_length: int
) -> dict[str, float]:
    logits = predict_logits(model, tokenizer, texts, max_length=max_length)
    pred = logits.argmax(axis=1)
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
    return {
        "eval_loss": round(loss, 6),
        "eval_accuracy": round(float((pred == y).mean()), 6),
        "eval_macro_f1": round(compute_macro_f1(y, pred), 6),
    }


def _fingerprint(cfg: TrainConfig, labels: list[str], parent: Path | None, *data: Any) -> str:
    """Hash of everything that makes a round this round (the device may change between resumes)."""
    h = hashlib.sha256()
    cfg_part = {k: v for k, v in cfg.to_dict().items() if k != "device"}
    h.update(json.dumps([cfg_part, labels, str(parent) if parent else None], sort_keys=True).encode())
    for part in data:
        h.update(json.dumps(part.tolist() if isinstance(part, np.ndarray) else part).encode())
    return h.hexdigest()


def _describe(record: dict[str, float], state: RunState) -> str:
    mark = " *best*" if state.best_epoch == record["epoch"] else ""
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}  "
        f"eval loss {record['eval_loss']:.4f}  "
        f"acc {record['eval_accuracy']:.4f}  macro-F1 {record['eval_macro_f1']:.4f}  "
        f"({record['seconds']:.1f} s){mark}"
    )
