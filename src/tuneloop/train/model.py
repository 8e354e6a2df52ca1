"""The classifier: a base encoder with a LoRA adapter and a trained head, and its label map.

An adapter folder (what a round writes, what the next round continues from) holds:

    adapter_config.json, adapter_model.safetensors   peft's LoRA + head weights (no pickle)
    labels.json                                      ordered label names; row i of the head = labels[i]
    tuneloop.json                                    base model spec and path, train config, parent
    tokenizer files

Continuing from a parent starts from its LoRA and head weights. When this round brings labels the
parent never saw, the head grows: the parent's labels keep their rows and order, the new labels are
appended in sorted order, and a label the parent knew stays even if this round has no rows for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tuneloop.train.base import BaseModelAllowance, resolve_base_model
from tuneloop.train.config import TrainConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
LABELS_FILE = "labels.json"
META_FILE = "tuneloop.json"
HEAD_MODULES = ("classifier", "score")  # what peft always trains and saves for SEQ_CLS


def merge_labels(parent: Sequence[str], new: Iterable[str]) -> list[str]:
    """The parent's labels in their order, then labels it did not know, sorted."""
    known = list(parent)
    return known + sorted(set(new) - set(known))


def read_labels(adapter_dir: Path) -> list[str]:
    """The ordered label list saved with an adapter."""
    labels = json.loads((Path(adapter_dir) / LABELS_FILE).read_text())
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{adapter_dir / LABELS_FILE} must hold a JSON list of label names")
    return labels


def read_meta(adapter_dir: Path) -> dict[str, Any]:
    """The tuneloop.json written with an adapter (base model, config, parent, labels)."""
    path = Path(adapter_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {adapter_dir} is not an adapter written by tuneloop.")
    meta: dict[str, Any] = json.loads(path.read_text())
    return meta


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and weight-loading bar (a new head is expected to be new)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def load_base(base_path: str, labels: Sequence[str]) -> Any:
    """The base encoder with a sequence-classification head of len(labels) rows, in float32."""
    from transformers import AutoModelForSequenceClassification

    with quiet_transformers():
        return AutoModelForSequenceClassification.from_pretrained(
            base_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            dtype=torch.float32,
        )


def build_classifier(
    cfg: TrainConfig, labels: Iterable[str], parent_adapter: Path | None = None
) -> tuple[Any, Any, list[str]]:
    """(peft model, tokenizer, label list) ready to train; call `torch.manual_seed` first for a seeded init.

    Without a parent, LoRA starts from peft's init (B = 0, so the adapted encoder equals the base) and
    the head from the base model's init; the labels are sorted. With a parent, LoRA and head weights
    start from the parent's saved ones, and the label list is `merge_labels(parent labels, labels)`.
    """
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoTokenizer

    parent_labels = read_labels(parent_adapter) if parent_adapter else []
    if parent_adapter:
        _check_parent(Path(parent_adapter), cfg)
    final = merge_labels(parent_labels, labels)
    # The configured base is the operator's own choice: trusted as it stands.
    base_path = resolve_base_model(cfg.base_model, BaseModelAllowance.of(cfg.base_model))
    model = load_base(base_path, final)
    _check_modules_to_save(model, cfg)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        modules_to_save=list(cfg.modules_to_save) or None,  # peft adds the classifier head itself
    )
    with warnings.catch_warnings():
        # peft 0.21 calls a transformers 5 method that warns of its own deprecation; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, lora)
    if parent_adapter:
        _load_parent_weights(model, Path(parent_adapter), parent_labels, final)
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    return model, tokenizer, final


def _check_modules_to_save(model: Any, cfg: TrainConfig) -> None:
    """peft matches modules_to_save by name suffix and ignores names that match nothing; we refuse them."""
    names = [name for name, _ in model.named_modules()]
    absent = [m for m in cfg.modules_to_save if not any(n == m or n.endswith("." + m) for n in names)]
    if absent:
        raise ValueError(
            f"base model {cfg.base_model!r} has no module named {absent}; set modules_to_save to modules "
            "it has, or to () to train only the LoRA and the classifier head."
        )


def _check_parent(parent: Path, cfg: TrainConfig) -> None:
    """LoRA weights only mean something on the same base with the same shape; refuse otherwise."""
    meta = read_meta(parent)
    our_path = resolve_base_model(cfg.base_model, BaseModelAllowance.of(cfg.base_model))
    if meta["base_model"] != cfg.base_model and meta.get("base_path") != our_path:
        raise ValueError(
            f"parent adapter {parent} was trained on base {meta['base_model']!r}, this round on "
            f"{cfg.base_model!r}; set base_model to the parent's, or train without a parent."
        )
    saved = json.loads((parent / "adapter_config.json").read_text())
    ours = {
        "r": cfg.lora_r,
        "lora_alpha": cfg.lora_alpha,
        "target_modules": sorted(cfg.target_modules),
        "modules_to_save": sorted(cfg.modules_to_save),
    }
    theirs = {
        "r": saved["r"],
        "lora_alpha": saved["lora_alpha"],
        "target_modules": sorted(saved["target_modules"]),
        "modules_to_save": sorted(set(saved.get("modules_to_save") or []) - set(HEAD_MODULES)),
    }
    if ours != theirs:
        raise ValueError(
            f"parent adapter {parent} has LoRA {theirs}, this config asks for {ours}; continuing needs "
            "the same shape: set lora_r, lora_alpha, target_modules and modules_to_save to the parent's, "
            "or train without a parent."
        )


def _load_parent_weights(model: Any, parent: Path, parent_labels: list[str], labels: list[str]) -> None:
    """Copy the parent's LoRA and head into `model`, growing head tensors whose rows are labels."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    saved = load_file(str(parent / ADAPTER_WEIGHTS))
    target = get_peft_model_state_dict(model)
    unknown = sorted(set(saved) - set(target))
    if unknown:
        raise ValueError(f"parent adapter {parent} has weights this model lacks, e.g. {unknown[:3]}")
    rows = [labels.index(name) for name in parent_labels]
    for key, tensor in saved.items():
        want = target[key].shape
        if tensor.shape == want:
            continue
        if tensor.shape[0] != len(parent_labels) or want[0] != len(labels) or tensor.shape[1:] != want[1:]:
            raise ValueError(f"parent weight {key} has shape {tuple(tensor.shape)}, expected {tuple(want)}")
        # A head row per label (weight [labels, hidden], bias [labels]): known labels keep their row,
        # matched by name. Each new row starts as the mean of the known rows (weight and bias), so its
        # logit is the mean of the known logits and never exceeds their max: before training, every
        # input keeps the prediction the parent gave it (ties break to the lower index, an old label),
        # while the new label starts with a fair, non-vanishing probability that gradients can move.
        grown = tensor.mean(dim=0, keepdim=True).repeat(len(labels), *([1] * (tensor.dim() - 1)))
        grown[rows] = tensor
        saved[key] = grown
    result: Any = set_peft_model_state_dict(model, saved)
    if result.unexpected_keys:
        raise ValueError(f"parent weights did not load into the model: {result.unexpected_keys[:3]}")


def load_classifier(
    adapter_dir: Path, device: str = "cpu", allowed: BaseModelAllowance | None = None
) -> tuple[Any, Any, list[str]]:
    """(peft model in eval mode, tokenizer, labels) from an adapter folder.

    The base model is resolved again from the spec in tuneloop.json (falling back to the path recorded
    there), so an adapter moves between machines that have the same base installed. Both come from
    the artifact, so both must pass `allowed` (default: what the settings allow) before anything is
    imported or read; a refusal is raised, never answered with the fallback.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    adapter_dir = Path(adapter_dir)
    meta = read_meta(adapter_dir)
    labels = read_labels(adapter_dir)
    allowed = allowed or BaseModelAllowance.from_settings()
    try:
        base_path = resolve_base_model(meta["base_model"], allowed)
    except (FileNotFoundError, ModuleNotFoundError, RuntimeError):
        recorded = meta.get("base_path")
        if not recorded or not allowed.check_folder(Path(recorded)).is_dir():
            raise
        base_path = recorded
    base = load_base(base_path, labels)
    with quiet_transformers(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = PeftModel.from_pretrained(base, str(adapter_dir))
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    return model.to(device).eval(), tokenizer, labels


def write_adapter(model: Any, tokenizer: Any, labels: list[str], dest: Path, meta: dict[str, Any]) -> Path:
    """Write the adapter folder atomically: into a temporary sibling, then renamed onto `dest`."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}-tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / LABELS_FILE).write_text(json.dumps(labels, indent=1) + "\n")
        (tmp / META_FILE).write_text(json.dumps(meta | {"labels": labels}, indent=1) + "\n")
        replace_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def replace_dir(src: Path, dest: Path) -> None:
    """Rename `src` onto `dest`; an existing `dest` is moved aside first, then removed.

    A folder cannot be renamed over a non-empty one, so there is a moment with no `dest`; a reader never
    sees a half-written one.
    """
    old = dest.with_name(f".{dest.name}-old-{uuid.uuid4().hex[:8]}")
    if dest.exists():
        os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True)
