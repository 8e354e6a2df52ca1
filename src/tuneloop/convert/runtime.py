"""Run a converted classifier with ONNX Runtime, after checking the file is the one registered.

The checksum is computed over the very bytes the session is built from (read once, hashed, then
handed to `InferenceSession`), so nothing can swap the file between the check and the load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneloop.convert.files import sha256_bytes
from tuneloop.host import usable_cores

DEFAULT_MAX_LENGTH = 128


class ChecksumMismatch(RuntimeError):
    """The model file's sha256 is not the one the caller expected; it was not loaded."""


def load_tokenizer(tokenizer_dir: Path) -> Any:
    """The tokenizer saved beside the model (the same one training used)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def encode(
    tokenizer: Any, texts: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH, pad_to: int | None = None
) -> dict[str, np.ndarray]:
    """Tokenise like serving: int64 arrays padded to the longest text in the batch (or to `pad_to`),
    truncated at `max_length`. `token_type_ids` is all zeros for single-sentence input."""
    if isinstance(texts, str):
        raise TypeError("encode takes a sequence of texts, not one string")
    enc = tokenizer(
        list(texts),
        padding="max_length" if pad_to else "longest",
        truncation=True,
        max_length=pad_to or max_length,
        return_tensors="np",
    )
    ids = enc["input_ids"].astype(np.int64)
    mask = enc["attention_mask"].astype(np.int64)
    types = enc.get("token_type_ids")
    types = np.zeros_like(ids) if types is None else types.astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def read_labels(folder: Path) -> list[str] | None:
    """Labels in index order from a `config.json` id2label, if the folder has one."""
    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        return None
    id2label = json.loads(config_path.read_text()).get("id2label") or {}
    return [id2label[key] for key in sorted(id2label, key=int)] if id2label else None


class OnnxClassifier:
    """An ONNX Runtime session over a converted classifier, refused if its sha256 differs."""

    def __init__(
        self,
        path: Path | str,
        expected_sha256: str | None = None,
        *,
        tokenizer_dir: Path | str | None = None,
        threads: int | None = None,
        max_length: int = DEFAULT_MAX_LENGTH,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        """Verify (when `expected_sha256` is given) and load `path`; tokenizer from its folder."""
        import onnxruntime as ort

        self.path = Path(path)
        model_bytes = self.path.read_bytes()
        self.sha256 = sha256_bytes(model_bytes)
        if expected_sha256 is not None and self.sha256 != expected_sha256.lower():
            raise ChecksumMismatch(
                f"refusing to load {self.path}: sha256 is {self.sha256}, expected {expected_sha256}"
            )
        options = ort.SessionOptions()
        # Pinned intra-op threads (default: the cores this container may use; ONNX Runtime's own
        # default counts every core of the node); one inter-op thread: the graph is a single chain.
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_bytes, options, providers=list(providers))
        self.input_names = {item.name for item in self.session.get_inputs()}
        folder = Path(tokenizer_dir) if tokenizer_dir else self.path.parent
        self.tokenizer = load_tokenizer(folder)
        self.labels = read_labels(folder)
        self.max_length = max_length

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Logits for already-encoded inputs."""
        feeds = {name: value for name, value in batch.items() if name in self.input_names}
        return np.asarray(self.session.run(["logits"], feeds)[0])

    def predict_logits(
        self, texts: Sequence[str], batch_size: int = 32, pad_to: int | None = None
    ) -> np.ndarray:
        """Logits [len(texts), num_labels], batches padded to their longest text (or `pad_to`)."""
        outputs = [
            self.run(encode(self.tokenizer, texts[i : i + batch_size], self.max_length, pad_to))
            for i in range(0, len(texts), batch_size)
        ]
        if not outputs:
            return np.zeros((0, len(self.labels or [])), dtype=np.float32)
        return np.concatenate(outputs)
