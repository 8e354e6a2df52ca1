"""The reference the conversion is judged against: the PyTorch model's logits, and fp32 ONNX's.

`eval_logits` scores every eval set once with PyTorch and fp32 ONNX Runtime (tokenised the same
way), and hands out `of(path)` to score any other ONNX file on the same texts; `judge_parity` judges the
published INT8 graph (or fp32 alone) against them with the policy's thresholds (parity.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.parity import ParityReport, check_parity
from tuneloop.convert.runtime import DEFAULT_MAX_LENGTH, OnnxClassifier, encode
from tuneloop.convert.settings import ConversionSettings
from tuneloop.convert.variants import EvalLogits


def label_indices(labels: Sequence[Any], label2id: Mapping[str, int]) -> np.ndarray:
    return np.asarray(
        [label if isinstance(label, int | np.integer) else label2id[str(label)] for label in labels]
    )


def load_torch_model(model_dir: Path, threads: int | None = None) -> Any:
    """The PyTorch reference model, as training saved it (default attention implementation)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if threads:
        torch.set_num_threads(threads)
    return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()


def torch_logits(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
) -> np.ndarray:
    """Reference logits from the PyTorch model, tokenised exactly as the ONNX runtime tokenises."""
    import torch

    outputs = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            batch = encode(tokenizer, texts[i : i + batch_size], max_length)
            outputs.append(model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.float().numpy())
    return np.concatenate(outputs) if outputs else np.zeros((0, model.config.num_labels), np.float32)


def judge_parity(
    model_dir: Path,
    out: Path,
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    thresholds: Any,
    settings: ConversionSettings,
) -> ParityReport:
    logits = eval_logits(model_dir, out, eval_sets, settings)
    int8 = out / "model.int8.onnx"  # absent when no INT8 candidate passed: fp32 is judged alone
    i8 = logits.of(int8) if int8.is_file() else None
    return check_parity(logits.reference, logits.fp32, i8, logits.labels, thresholds)


def fp32_path(out: Path) -> Path:
    return out / ("model.opt.onnx" if (out / "model.opt.onnx").is_file() else "model.onnx")


def eval_logits(
    model_dir: Path,
    out: Path,
    eval_sets: Mapping[str, tuple[Sequence[str], Sequence[Any]]],
    settings: ConversionSettings,
) -> EvalLogits:
    """PyTorch and fp32 ONNX logits on every eval set, once; `of(path)` runs any other ONNX file."""
    label2id = json.loads((Path(model_dir) / "config.json").read_text()).get("label2id") or {}
    fp32 = OnnxClassifier(fp32_path(out), threads=settings.threads, max_length=settings.max_length)
    model, tokenizer = load_torch_model(model_dir, settings.threads), fp32.tokenizer
    sets = {name: list(texts) for name, (texts, _) in eval_sets.items()}

    def onnx_logits(path: Path) -> dict[str, np.ndarray]:
        session = OnnxClassifier(
            path, threads=settings.threads, max_length=settings.max_length, tokenizer_dir=out
        )
        return {name: session.predict_logits(texts, settings.batch_size) for name, texts in sets.items()}

    return EvalLogits(
        reference={
            name: torch_logits(model, tokenizer, texts, settings.max_length, settings.batch_size)
            for name, texts in sets.items()
        },
        fp32={name: fp32.predict_logits(texts, settings.batch_size) for name, texts in sets.items()},
        labels={name: label_indices(labels, label2id) for name, (_, labels) in eval_sets.items()},
        of=onnx_logits,
        texts=[text for texts in sets.values() for text in texts],
        tokenizer=tokenizer,
    )
