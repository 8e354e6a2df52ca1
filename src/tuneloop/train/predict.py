"""Using a trained adapter: logits for texts, and a merged plain model for export."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneloop.train.model import load_classifier, quiet_transformers, replace_dir


def predict_logits(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64, max_length: int = 64
) -> np.ndarray:
    """Logits, float32 [len(texts), labels], in eval mode and without gradients.

    Each batch is padded to its own longest text (at most `max_length` tokens), which for short
    intents (~12 tokens) is about 5x fewer positions than padding every batch to 64.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                out.append(model(**batch).logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        num_labels = int(model.config.num_labels)
        return np.zeros((0, num_labels), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def merge_adapter(adapter_dir: Path, out_dir: Path) -> Path:
    """Fold the LoRA into the base weights and write a plain transformers model to `out_dir`.

    The result is what the convert stage exports: `model.safetensors`, `config.json` with id2label and
    label2id from the label map, the tokenizer and `labels.json`. Written to a temporary sibling and
    renamed into place.
    """
    import json

    model, tokenizer, labels = load_classifier(Path(adapter_dir))
    merged = model.merge_and_unload()
    merged.config.id2label = dict(enumerate(labels))
    merged.config.label2id = {name: i for i, name in enumerate(labels)}
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}-tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        with quiet_transformers():
            merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
