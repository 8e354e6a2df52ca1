"""Width: structured pruning of a student's feed-forward neurons, by their importance on the round's data.

Torch-Pruning (https://github.com/VainF/Torch-Pruning) traces the model, finds what each FFN neuron
couples to (a row of `intermediate.dense` and its bias, a column of `output.dense`) and removes
whole neurons, so the result is a smaller dense model, not a masked one. Importance is first-order
Taylor (|weight x gradient|, summed over the coupled group) of the distillation loss (KL to the
teacher's logits at the policy's temperature) on a few batches of the round's own training rows:
the neurons this round's data leans on least go.

Every layer keeps the same count (`keep` x intermediate_size, rounded), so `config.intermediate_size`
still describes the model and it saves and loads like any BERT. Attention heads are not pruned:
a transformers 5 BERT derives the head size from hidden_size / num_attention_heads, so a model with
fewer heads of the same size cannot be written as a config that loads (transformers 5 dropped the
`pruned_heads` bookkeeping that allowed it). For MiniLM-L6 the FFN is 2 x 384 x 1536 = 1.18 M of a
layer's 1.77 M weights, so keeping half its neurons takes a layer's matrix work to about 0.67x.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def ffn_layers(model: Any) -> list[Any]:
    """The `intermediate.dense` Linear of every encoder layer (BERT-family naming)."""
    layers = [m.intermediate.dense for m in model.base_model.encoder.layer]
    if not layers:
        raise ValueError("the model has no encoder layers with an intermediate.dense to prune")
    return layers


def prune_ffn(
    student: Any,
    tokenizer: Any,
    texts: Sequence[str],
    teacher_logits: np.ndarray,
    keep: float,
    *,
    temperature: float = 2.0,
    batches: int = 4,
    batch_size: int = 32,
    max_length: int = 64,
    seed: int = 13,
) -> dict[str, int]:
    """Prune `student` in place to `keep` of its FFN neurons per layer; returns {"before", "after"}.

    `teacher_logits` are aligned with `texts` (the rows the importance is measured on: up to
    `batches` seeded batches of them).
    """
    import torch_pruning as tp

    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    before = int(student.config.intermediate_size)
    after = max(1, round(before * keep))
    if after == before:
        return {"before": before, "after": before}
    order = np.random.default_rng(seed).permutation(len(texts))[: batches * batch_size]
    encoded = tokenizer(
        [texts[i] for i in order[:batch_size]],
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    keep_layers = ffn_layers(student)
    ignored = [m for m in student.modules() if isinstance(m, torch.nn.Linear) and m not in keep_layers]
    pruner = tp.pruner.MetaPruner(
        student,
        example_inputs=dict(encoded),
        importance=tp.importance.GroupTaylorImportance(),
        pruning_ratio=1 - after / before,
        ignored_layers=[*ignored, student.get_input_embeddings()],
        output_transform=lambda out: out.logits,
    )
    student.train()
    student.zero_grad()
    soft = torch.from_numpy(np.asarray(teacher_logits, dtype=np.float32))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in rows],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        logits = student(**batch).logits / temperature
        target = F.log_softmax(soft[torch.as_tensor(rows)] / temperature, -1)
        F.kl_div(F.log_softmax(logits, -1), target, log_target=True, reduction="batchmean").backward()
    pruner.step()
    student.zero_grad()
    student.eval()
    widths = {layer.out_features for layer in ffn_layers(student)}
    if widths != {after}:
        raise RuntimeError(f"pruning left FFN widths {sorted(widths)}, expected {after} in every layer")
    student.config.intermediate_size = after
    return {"before": before, "after": after}
