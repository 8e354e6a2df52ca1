"""Per-epoch checkpoints without pickle: weights and AdamW state as safetensors, the rest as JSON.

    checkpoints/last/
        trainable.safetensors   every trainable tensor (LoRA + head) after the epoch
        best.safetensors        the same tensors at the best epoch so far
        optimizer.safetensors   AdamW moments, keyed "<param index>.<name>"
        state.json              epoch, step, history, early-stopping state, param groups, fingerprint

The folder is written under a temporary name and renamed, so a run killed mid-write leaves the
previous epoch's checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tuneloop.train.model import replace_dir

LAST = "last"


@dataclass
class RunState:
    """Where a round stands after its last finished epoch (epoch 0: nothing trained yet)."""

    fingerprint: str
    epoch: int = 0
    step: int = 0
    best_epoch: int = 0
    best_f1: float = -1.0
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


def trainable_tensors(model: Any) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the trainable parameters, by name."""
    return {
        n: p.detach().to("cpu", copy=True).contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Copy `tensors` into the model's trainable parameters; every one must be matched."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        raise ValueError("checkpoint tensors do not match the model's trainable parameters")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(tensors[name].to(param.device))


def save_checkpoint(
    root: Path, state: RunState, model: Any, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer
) -> None:
    """Write `root/last` atomically."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{LAST}-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file(trainable_tensors(model), str(tmp / "trainable.safetensors"))
        save_file(best, str(tmp / "best.safetensors"))
        opt = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        plain: dict[str, dict[str, Any]] = {}
        for index, slots in opt["state"].items():
            for name, value in slots.items():
                if torch.is_tensor(value):
                    tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
                else:
                    plain.setdefault(str(index), {})[name] = value
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        extra = {"param_groups": opt["param_groups"], "plain_state": plain}
        (tmp / "state.json").write_text(json.dumps(asdict(state) | extra, indent=1))
        replace_dir(tmp, root / LAST)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(
    root: Path, fingerprint: str, model: Any, optimizer: torch.optim.Optimizer
) -> tuple[RunState, dict[str, torch.Tensor]] | None:
    """Restore model, optimizer and run state from `root/last`; None when there is no checkpoint.

    A checkpoint from a different round (other data, labels, config or parent) is refused rather than
    silently mixed in.
    """
    folder = root / LAST
    if not (folder / "state.json").is_file():
        return None
    raw = json.loads((folder / "state.json").read_text())
    if raw["fingerprint"] != fingerprint:
        raise ValueError(
            f"{folder} holds a checkpoint of a different round (data, labels, config or parent differ); "
            "use a fresh out_dir, or delete that checkpoints folder to start over."
        )
    load_trainable(model, load_file(str(folder / "trainable.safetensors")))
    best = load_file(str(folder / "best.safetensors"))
    flat = load_file(str(folder / "optimizer.safetensors"))
    device = next(model.parameters()).device
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        # AdamW keeps `step` on the CPU unless capturable/fused; the moments live beside the params.
        opt_state.setdefault(int(index), {})[name] = value if name == "step" else value.to(device)
    for index, slots in raw.pop("plain_state").items():
        opt_state.setdefault(int(index), {}).update(slots)
    groups = raw.pop("param_groups")
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    return RunState(**raw), best
