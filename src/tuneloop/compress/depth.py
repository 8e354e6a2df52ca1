"""Depth students: a copy of the teacher with fewer encoder layers, initialised from its weights.

The student is the teacher's own architecture with `num_hidden_layers` set to the kept count:
embeddings, the kept layers (renumbered 0..d-1), pooler and classifier are copied tensor for
tensor, so before any distillation it already computes what the teacher computes with the other
layers skipped. Saved as a plain transformers folder in the layout `train/predict.py merge_adapter`
writes for the teacher (model.safetensors, config.json with id2label, tokenizer, labels.json), so
the convert stage can export a student as it exports a teacher.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# Encoder layer parameters of BERT-family models: bert.encoder.layer.<i>.attention... The one part
# of a state dict whose names carry a layer index; every other tensor is copied under its own name.
LAYER_KEY = re.compile(r"^(?P<head>(?:.+\.)?encoder\.layer\.)(?P<index>\d+)\.(?P<rest>.+)$")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json")
STUDENT_RECORD = "student.json"  # which teacher layers a student kept, beside its weights


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def read_labels(model_dir: Path) -> list[str]:
    """The label names in head order: labels.json, else config.json's id2label."""
    model_dir = Path(model_dir)
    path = model_dir / "labels.json"
    if path.is_file():
        return [str(x) for x in json.loads(path.read_text())]
    id2label = json.loads((model_dir / "config.json").read_text())["id2label"]
    return [str(id2label[str(i)]) for i in range(len(id2label))]


def load_teacher(model_dir: Path) -> tuple[Any, Any, list[str]]:
    """(model in eval mode, tokenizer, labels) of a plain sequence-classification folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with _quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model.eval()
    return model, tokenizer, read_labels(model_dir)


def teacher_depth(model: Any) -> int:
    """The number of encoder layers of a loaded model."""
    return int(model.config.num_hidden_layers)


def build_depth_student(teacher: Any, layers: Sequence[int]) -> Any:
    """A new model of the teacher's class with only `layers` (teacher indices, ascending) kept.

    Raises ValueError for indices out of range, repeated or unordered, and when a student tensor
    has no teacher tensor to come from (an architecture whose layers this naming does not cover).
    """
    depth = teacher_depth(teacher)
    kept = list(layers)
    if not kept or any(not 0 <= i < depth for i in kept) or kept != sorted(set(kept)):
        raise ValueError(f"layers must be ascending, distinct indices below {depth}, got {kept}")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(kept)
    with _quiet_transformers():
        student = type(teacher)(config)
    source = teacher.state_dict()
    renumber = {old: new for new, old in enumerate(kept)}
    state = {}
    for name, tensor in source.items():
        match = LAYER_KEY.match(name)
        if match is None:
            state[name] = tensor.detach().clone()
        elif int(match["index"]) in renumber:
            state[f"{match['head']}{renumber[int(match['index'])]}.{match['rest']}"] = tensor.detach().clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"the student's weights do not map onto the teacher's: missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]}"
        )
    return student


def count_parameters(model: Any) -> int:
    """All parameters of a model (tied tensors counted once)."""
    return int(sum(p.numel() for p in model.parameters()))


def save_student(
    student: Any, teacher_dir: Path, out_dir: Path, layers: Sequence[int], teacher_layers: int
) -> Path:
    """Write the student to `out_dir` in the teacher folder's layout, atomically.

    Weights and config.json (id2label as the teacher's) from the student; every other file of the
    teacher folder (tokenizer, labels.json) copied as is; `student.json` says which teacher layers
    were kept. Written to a temporary sibling and renamed into place.
    """
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}-tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        for path in teacher_dir.iterdir():
            if path.is_file() and path.name not in WEIGHT_FILES:
                shutil.copy2(path, tmp / path.name)
        with _quiet_transformers():
            student.save_pretrained(str(tmp), safe_serialization=True)
        record = {"teacher_layers": teacher_layers, "layers": list(layers)}
        (tmp / STUDENT_RECORD).write_text(json.dumps(record) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
