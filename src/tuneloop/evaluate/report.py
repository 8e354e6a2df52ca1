"""An evaluation report (Scores per named set) and backward transfer between two models.

The sets the loop uses:
  - `new`: the eval split of the snapshots the candidate was trained on (what it should have learnt),
  - `new@<snapshot>`: the same rows, one part per snapshot (`build_report(groups=...)`), so a snapshot
    is judged on its own rows too, not only pooled with cleaner ones,
  - `golden`: the frozen regression set, never trained on (what it must not forget),
  - `union`: `new` and `golden` together (one number for the model as a whole).

The model comes in as a function `predict_fn(texts) -> labels`, so this package never imports torch
and tests can hand in a lookup table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from tuneloop.evaluate.metrics import Scores, score

NEW, GOLDEN, UNION = "new", "golden", "union"
PART = "@"  # `new@snap-0002`: the rows of `new` that came from snap-0002

PredictFn = Callable[[list[str]], list[str]]


class EvalReport(BaseModel):
    """Scores of one model on each named set, plus what identifies the model."""

    model_config = ConfigDict(frozen=True)

    sets: dict[str, Scores] = Field(description="Scores per set name (`new`, `golden`, `union`, ...).")
    version: str | None = Field(
        default=None, description="Registry version of the model scored, if it has one (e.g. '3')."
    )
    model_labels: list[str] | None = Field(
        default=None,
        description="Labels the model was trained on (its classifier head). Comparisons with a newer "
        "model only judge these; None means: infer them from what the model predicted.",
    )

    def known_labels(self) -> list[str]:
        """The labels this model knew: `model_labels`, else every label it predicted in any set.

        The fallback can only under-count (a model cannot predict a label it never knew, and a known
        label it never predicted has F1 0, so there is nothing on it to forget). Counting labels it
        never knew would be worse: each would look like a rise from F1 0 and hide real forgetting.
        """
        if self.model_labels is not None:
            return list(self.model_labels)
        seen = {label for scores in self.sets.values() for label in scores.predicted_labels()}
        order = next(iter(self.sets.values())).labels if self.sets else []
        return [label for label in order if label in seen]

    def whole_sets(self) -> dict[str, Scores]:
        """The sets without their parts: `new`, `golden`, `union` (what tags and plots show)."""
        return {name: scores for name, scores in self.sets.items() if PART not in name}

    def parts(self, name: str) -> dict[str, Scores]:
        """{group: Scores} of the parts of set `name` (`new@snap-0002` -> "snap-0002"), in order."""
        prefix = name + PART
        return {key[len(prefix) :]: s for key, s in self.sets.items() if key.startswith(prefix)}

    @property
    def new(self) -> Scores | None:
        """Scores on the new snapshot's eval split."""
        return self.sets.get(NEW)

    @property
    def golden(self) -> Scores | None:
        """Scores on the golden regression set."""
        return self.sets.get(GOLDEN)

    @property
    def union(self) -> Scores | None:
        """Scores on the eval split and golden set together."""
        return self.sets.get(UNION)

    @property
    def name(self) -> str:
        """How reasons and plots refer to the model: 'v3', or '(unversioned)'."""
        if not self.version:
            return "(unversioned)"
        return self.version if self.version.startswith("v") else f"v{self.version}"


class BackwardTransfer(BaseModel):
    """Golden F1 of the candidate minus the champion's, per label the champion knew.

    Negative values are forgetting, positive ones improvement. Values are F1 differences in [-1, 1],
    not points.
    """

    model_config = ConfigDict(frozen=True)

    per_label: dict[str, float] = Field(description="Candidate F1 - champion F1, per judged label.")
    mean: float = Field(description="Mean of per_label (0.0 when no label could be judged).")
    support: dict[str, int] = Field(description="Golden rows per judged label.")


def backward_transfer(
    candidate_golden: Scores,
    champion_golden: Scores,
    champion_labels: Sequence[str] | None = None,
    min_support: int = 1,
) -> BackwardTransfer:
    """Per-label golden F1 change from champion to candidate, on the labels the champion knew.

    `champion_labels` is the champion's own label set (its classifier head, or
    `EvalReport.known_labels()`); without it, the labels the champion predicted at least once on the
    golden set count as known. A label the champion never knew would otherwise show up as a large
    "improvement" from F1 0 and inflate the mean. Labels with fewer than `min_support` golden
    rows are left out (one flipped row moves their F1 by tens of points). Both Scores must come from
    the same golden set: supports that disagree mean they do not, and raise ValueError.
    """
    known = list(champion_labels) if champion_labels is not None else champion_golden.predicted_labels()
    per_label: dict[str, float] = {}
    support: dict[str, int] = {}
    for label in known:
        champ = champion_golden.per_label.get(label)
        cand = candidate_golden.per_label.get(label)
        if champ is None or cand is None or champ.support < min_support:
            continue
        if cand.support != champ.support:
            raise ValueError(
                f"golden support for {label!r} differs ({cand.support} vs {champ.support}): "
                "score candidate and champion on the same golden set"
            )
        per_label[label] = cand.f1 - champ.f1
        support[label] = champ.support
    mean = sum(per_label.values()) / len(per_label) if per_label else 0.0
    return BackwardTransfer(per_label=per_label, mean=mean, support=support)


def build_report(
    predict_fn: PredictFn,
    sets: Mapping[str, tuple[Sequence[str], Sequence[str]]],
    labels: Sequence[str],
    version: str | None = None,
    model_labels: Sequence[str] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> EvalReport:
    """Predict each set once with `predict_fn` and score it; add `union` when `new` and `golden` exist.

    `sets` maps a set name to (texts, true labels). `labels` is the label order for every Scores (pass
    the union of candidate and champion labels so their reports line up). The union set reuses the
    predictions already made, so the model runs over each row once. `groups` maps a set name to one
    group per row (the snapshot each `new` row came from): each group is scored as `<set>@<group>`
    from the same predictions.
    """
    truths: dict[str, list[str]] = {}
    preds: dict[str, list[str]] = {}
    for name, (texts, y_true) in sets.items():
        if len(texts) != len(y_true):
            raise ValueError(f"set {name!r}: {len(texts)} texts but {len(y_true)} labels")
        predicted = list(predict_fn(list(texts)))
        if len(predicted) != len(texts):
            raise ValueError(f"set {name!r}: predict_fn returned {len(predicted)} labels for {len(texts)}")
        truths[name], preds[name] = list(y_true), predicted
    for name, row_groups in (groups or {}).items():
        if len(row_groups) != len(truths[name]):
            raise ValueError(f"set {name!r}: {len(row_groups)} groups for {len(truths[name])} rows")
        for group in dict.fromkeys(row_groups):
            rows = [i for i, g in enumerate(row_groups) if g == group]
            truths[f"{name}{PART}{group}"] = [truths[name][i] for i in rows]
            preds[f"{name}{PART}{group}"] = [preds[name][i] for i in rows]
    if UNION not in sets and NEW in sets and GOLDEN in sets:
        truths[UNION] = truths[NEW] + truths[GOLDEN]
        preds[UNION] = preds[NEW] + preds[GOLDEN]
    scored = {name: score(truths[name], preds[name], list(labels)) for name in truths}
    return EvalReport(
        sets=scored,
        version=version,
        model_labels=list(model_labels) if model_labels is not None else None,
    )
