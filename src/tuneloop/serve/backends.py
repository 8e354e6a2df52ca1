"""Backends that run a version: ONNX Runtime (INT8 or fp32), the PyTorch merged model, TensorRT.

`plan_backends` is the pure decision: which backends may serve a version, best first, and why the
others step aside. A version whose conversion has not passed parity is served only by the PyTorch
merged model, the reference the conversion is checked against. The loaders take local files the
caller has downloaded; each checks the sha256 of the exact bytes it loads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.host import usable_cores
from tuneloop.serve.bundle import softmax

ONNX_FILES = {
    "onnx-int8": ("model.int8.onnx", "int8_sha256"),
    "onnx-fp32": ("model.opt.onnx", "onnx_opt_sha256"),
}
KNOWN = ("tensorrt", "onnx-int8", "onnx-fp32", "torch")


class IntegrityError(RuntimeError):
    """A file's sha256 is not the one recorded for it; the version must not be served."""


def threads_per_session(workers: int, cores: int | None = None) -> int:
    """Intra-op threads per model so `workers` processes share the cores: max(1, cores // workers).

    2 cores and 1 worker: 2 threads; 2 workers: 1 each; 4 workers: still 1 (oversubscribed, by choice).
    Cores default to what this process may use: the affinity capped by the container's CPU quota
    (tuneloop.host), not every core of the node.
    """
    available = cores if cores is not None else usable_cores()
    return max(1, available // max(1, workers))


def parse_backends(text: str) -> tuple[str, ...]:
    """`onnx-int8,torch` -> ("onnx-int8", "torch"); unknown names raise ValueError."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [n for n in names if n not in KNOWN]
    if unknown or not names:
        raise ValueError(f"unknown serving backends {unknown}; choose from {list(KNOWN)}")
    return names


def plan_backends(
    preference: Sequence[str], tags: Mapping[str, str], tensorrt_reason: str
) -> tuple[list[str], list[str]]:
    """(backends to try in order, notes on those that step aside) for a version with `tags`.

    `tensorrt_reason` is why TensorRT cannot run on this host ("" when it can: the caller asks the
    convert stage's tensorrt_status, which checks the package and the GPU).
    """
    conversion = tags.get("conversion", "not run")
    notes: list[str] = []
    plan: list[str] = []
    student = tags.get("serves", "teacher") != "teacher" and conversion == "passed"
    for name in preference:
        if name == "torch" and student:
            # The merged PyTorch model is the teacher: serving it where the conversion chose a
            # student would answer from another model than the one the version says it serves.
            notes.append(f"torch: the version serves its {tags['serves']}; the PyTorch model is the teacher")
        elif name == "torch":
            plan.append(name)
        elif conversion != "passed":
            notes.append(f"{name}: conversion is {conversion}, so only the PyTorch merged model serves")
        elif name == "tensorrt" and tensorrt_reason:
            notes.append(f"tensorrt: {tensorrt_reason}")
        elif name == "tensorrt" and not (tags.get("trt_sha256") and tags.get("conversion_path")):
            notes.append(f"tensorrt: the conversion published no engine (trt: {tags.get('trt', 'not run')})")
        elif name == "tensorrt":
            plan.append(name)
        elif not tags.get(ONNX_FILES[name][1]) or not tags.get("conversion_path"):
            notes.append(f"{name}: the version has no {ONNX_FILES[name][1]} / conversion_path tag")
        elif name == "onnx-int8" and tags.get("int8_serve") == "fp32":
            notes.append("onnx-int8: the conversion timed INT8 no faster than fp32 on its host (int8_serve)")
        else:
            plan.append(name)
    return plan, notes


def read_labels(folder: Path) -> list[str]:
    """Labels in index order from config.json's id2label."""
    id2label = json.loads((folder / "config.json").read_text()).get("id2label") or {}
    if not id2label:
        raise ValueError(f"{folder / 'config.json'} has no id2label: not a classifier tuneloop trained")
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


class OnnxPredictor:
    """An ONNX Runtime session built from bytes whose sha256 was checked first."""

    def __init__(
        self,
        model_file: Path,
        sha256: str,
        support: Path,
        threads: int,
        max_tokens: int,
        *,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        data = model_file.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise IntegrityError(f"{model_file.name}: sha256 {actual} but the version records {sha256}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one chain of ops: no parallel branches to run
        # Spinning worker threads answer the next op sooner but burn a core while they spin, which
        # the event loop or a second loaded version may need (ServeSettings.ort_spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = _tokenizer(support)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.labels = read_labels(support)
        self.max_tokens = max_tokens

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Probabilities per text: one model call per group of similar lengths (length_groups)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]
        out = np.empty((len(texts), len(self.labels)), dtype=np.float32)
        for group in length_groups([len(row) for row in ids]):
            width = max(len(ids[i]) for i in group)
            batch = np.full((len(group), width), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(group), width), dtype=np.int64)
            for row, i in enumerate(group):
                batch[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1
            feeds = {"input_ids": batch, "attention_mask": mask, "token_type_ids": np.zeros_like(batch)}
            logits = self.session.run(["logits"], {k: v for k, v in feeds.items() if k in self.inputs})[0]
            out[group] = softmax(np.asarray(logits, dtype=np.float32))
        return out


def length_groups(lengths: Sequence[int], slack: float = 0.25, free_tokens: int = 64) -> list[list[int]]:
    """Indices of a batch split into groups of similar token length, shortest first.

    A batch padded to its longest text computes `count x longest` tokens. BANKING77 texts run from
    3 to 80 tokens (median 13), so 16 texts padded to the longest of them compute about 3x the
    tokens they hold. Sorted by length, a group takes the next text while its padding stays within
    `slack` of its real tokens or under `free_tokens` (each extra call costs a fixed ~0.1-0.3 ms,
    so small batches are not split). Pure: tests check it on plain lists.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        width = lengths[i]  # the longest so far: lengths are ascending
        padding = (len(current) + 1) * width - (real + width)
        if current and padding > max(free_tokens, slack * (real + width)):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += width
    if current:
        groups.append(current)
    return groups


class TorchPredictor:
    """The merged transformers model (safetensors only: no pickle is ever loaded)."""

    def __init__(self, folder: Path, threads: int, max_tokens: int) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), use_safetensors=True
        ).eval()
        self.tokenizer = _tokenizer(folder)
        self.labels = read_labels(folder)
        self.max_tokens = max_tokens

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        with torch.inference_mode():
            logits = self.model(**enc).logits.float().numpy()
        return softmax(logits)
