"""Knowledge distillation of a student from its teacher's logits: a plain PyTorch loop, seeded.

    loss = alpha x KL(teacher/T || student/T) x T^2 + (1 - alpha) x CE(student, labels)
           [+ hidden_weight x MSE(student hidden states, the teacher's at the kept layers)]

The teacher's logits are computed once, before the first step (one inference pass over the texts);
its hidden states, needed only for the optional MSE term, batch by batch (holding them all would be
rows x tokens x hidden floats: 1,246 x 64 x 384 x 4 bytes = 122 MB per layer for a BANKING77 round).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tuneloop.progress import progress_bar

WARMUP_SHARE = 0.06  # as the train stage: linear warm-up over 6% of the steps, then linear decay to 0
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class DistillConfig:
    """How a student is trained; the policy's `compress` section and the settings fill it."""

    epochs: int = field(metadata={"help": "Passes over the texts."})
    learning_rate: float = field(metadata={"help": "Peak AdamW learning rate (all weights train)."})
    temperature: float = field(metadata={"help": "Softmax temperature of both sides of the KL term."})
    alpha: float = field(metadata={"help": "Weight of the KL term; 1 - alpha weighs the cross-entropy."})
    batch_size: int = field(default=32, metadata={"help": "Texts per step."})
    max_length: int = field(default=64, metadata={"help": "Tokens per text (longer is truncated)."})
    seed: int = field(default=13, metadata={"help": "Seed of the initial state, the shuffles and dropout."})
    hidden_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the hidden-state MSE at the kept layers; 0 (default) leaves it out."},
    )

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.max_length < 1:
            raise ValueError("epochs, batch_size and max_length must be at least 1")
        if self.learning_rate <= 0 or self.temperature <= 0:
            raise ValueError("learning_rate and temperature must be positive")
        if not 0 <= self.alpha <= 1 or self.hidden_weight < 0:
            raise ValueError("alpha must lie in [0, 1] and hidden_weight must not be negative")


@dataclass
class DistillResult:
    """What a distillation did: steps, seconds, and the mean loss of each epoch."""

    steps: int
    seconds: float
    epoch_losses: list[float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def predict_logits(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64, max_length: int = 64
) -> np.ndarray:
    """Logits, float32 [len(texts), labels], in eval mode and without gradients; each batch padded to
    its own longest text (the train stage's `predict_logits`, which this stage may not import)."""
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = _tokens(tokenizer, texts[start : start + batch_size], max_length)
                out.append(model(**batch).logits.float().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, int(model.config.num_labels)), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def kl_to_teacher(student_logits: np.ndarray, teacher_logits: np.ndarray, temperature: float = 1.0) -> float:
    """Mean KL(teacher || student) per row of the softmaxes at `temperature`: 0 when they agree."""
    s = torch.from_numpy(np.asarray(student_logits, dtype=np.float32)) / temperature
    t = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32)) / temperature
    kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    return float(kl)


def distill(
    student: Any,
    tokenizer: Any,
    texts: Sequence[str],
    label_ids: Sequence[int],
    teacher_logits: np.ndarray,
    cfg: DistillConfig,
    *,
    teacher: Any = None,
    layers: Sequence[int] = (),
    progress: bool = False,
) -> DistillResult:
    """Train `student` in place on `texts` towards `teacher_logits` (rows aligned) and `label_ids`.

    `teacher` and `layers` (the teacher layers the student kept) are needed only with
    `cfg.hidden_weight` > 0: student layer j's output is matched to teacher layer layers[j]'s.
    """
    if len(texts) != len(label_ids) or len(texts) != len(teacher_logits):
        raise ValueError("texts, label_ids and teacher_logits must have one entry per row")
    if not texts:
        raise ValueError("distillation needs at least one text")
    if cfg.hidden_weight > 0 and (teacher is None or len(layers) != student.config.num_hidden_layers):
        raise ValueError("hidden_weight > 0 needs the teacher and the kept layers, one per student layer")
    torch.manual_seed(cfg.seed)
    # The word embeddings stay the teacher's: a LoRA teacher never changed them (they are the base
    # model's), and a frozen copy is stored once with the version (steps/students.py keeps only the
    # tensors that differ): MiniLM's 30,522 x 384 fp32 table is 46.9 MB of a 3-layer student's 69.
    student.get_input_embeddings().weight.requires_grad_(False)
    soft = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
    target = torch.as_tensor(np.asarray(label_ids), dtype=torch.long)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=WEIGHT_DECAY)
    # e.g. 1,246 rows / 32 = 39 steps an epoch x 5 epochs = 195 steps, 12 of them warm-up.
    per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total = per_epoch * cfg.epochs
    warmup = max(1, math.ceil(WARMUP_SHARE * total))
    losses: list[float] = []
    step = 0
    started = time.perf_counter()
    student.train()
    with progress_bar(progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            order = torch.randperm(len(texts), generator=generator).tolist()
            task = bar.add_task(f"distil epoch {epoch}/{cfg.epochs}", total=per_epoch, loss=float("nan"))
            epoch_losses: list[float] = []
            for start in range(0, len(texts), cfg.batch_size):
                rows = order[start : start + cfg.batch_size]
                scale = (
                    (step + 1) / warmup
                    if step < warmup
                    else max(0.0, (total - step) / max(1, total - warmup))
                )
                for group in optimizer.param_groups:
                    group["lr"] = cfg.learning_rate * scale
                batch = _tokens(tokenizer, [texts[i] for i in rows], cfg.max_length)
                loss = _loss(student, batch, soft[rows], target[rows], cfg, teacher, layers)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                epoch_losses.append(float(loss.item()))
                bar.update(task, advance=1, loss=float(np.mean(epoch_losses[-10:])))
            losses.append(round(float(np.mean(epoch_losses)), 6))
    student.eval()
    return DistillResult(steps=step, seconds=round(time.perf_counter() - started, 3), epoch_losses=losses)


def _loss(
    student: Any,
    batch: Any,
    soft: torch.Tensor,
    target: torch.Tensor,
    cfg: DistillConfig,
    teacher: Any,
    layers: Sequence[int],
) -> torch.Tensor:
    hidden = cfg.hidden_weight > 0
    output = student(**batch, output_hidden_states=hidden)
    logits = output.logits.float()
    t = cfg.temperature
    # KL(teacher || student) at temperature T, scaled by T^2 so its gradients keep the size of the
    # cross-entropy's as T changes (Hinton et al., 2015).
    kd = F.kl_div(
        F.log_softmax(logits / t, dim=-1),
        F.log_softmax(soft / t, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    loss = cfg.alpha * kd * t * t + (1 - cfg.alpha) * F.cross_entropy(logits, target)
    if hidden:
        with torch.no_grad():
            reference = teacher(**batch, output_hidden_states=True).hidden_states
        # hidden_states[0] is the embeddings' output, so layer i's output is at i + 1. Padding
        # positions are left out of the mean: they carry no text.
        mask = batch["attention_mask"].unsqueeze(-1).float()
        terms = [
            (((output.hidden_states[j + 1] - reference[i + 1]) ** 2) * mask).sum()
            / (mask.sum() * output.hidden_states[j + 1].shape[-1])
            for j, i in enumerate(layers)
        ]
        loss = loss + cfg.hidden_weight * torch.stack(terms).mean()
    return loss


def _tokens(tokenizer: Any, texts: Sequence[str], max_length: int) -> Any:
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
