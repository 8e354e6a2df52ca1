"""Rehearsal: which earlier training rows a round trains on again, so old labels are not forgotten.

Pure functions over DataFrames with at least the columns text, label, key, snapshot. A row is named by
(snapshot, key); the manifest lists those names and a hash, so a round's exact replay set can be
rebuilt from the snapshots alone.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np
import pandas as pd

REQUIRED = ("text", "label", "key", "snapshot")
MANIFEST_VERSION = 1


def replay_budget(n_new_rows: int, fraction: float) -> int:
    """round(fraction * n_new_rows) with halves rounded up: 0.5 x 5 = 2.5 -> 3 (Python's round gives 2)."""
    if n_new_rows < 0 or not 0 <= fraction <= 1:
        raise ValueError(f"need n_new_rows >= 0 and 0 <= fraction <= 1, got {n_new_rows}, {fraction}")
    return int(math.floor(fraction * n_new_rows + 0.5))


def select_replay(
    history: pd.DataFrame,
    n_new_rows: int,
    fraction: float,
    seed: int,
    *,
    per_label: int = 0,
    cover_labels: bool = True,
) -> pd.DataFrame:
    """A seeded sample of `history`, balanced across labels, of round(fraction * n_new_rows) rows,
    or `per_label` rows for every label in `history` where that is more.

    Why per label: a fraction of the new rows shrinks each old label's share as labels pile up. On
    BANKING77 with 10 new intents of 28 rows a round, 0.3 replays 84 rows: 2.8 rows for each of 30
    old intents in round 2 but 1.2 for each of 70 in round 6, so every round forgot more than the
    one before (issue 14). `per_label` rows per old label keep each label's rehearsal constant, and
    the round's size grows only by per_label rows per label (benchmarks/continual.py measures it).

    The size is capped by what `history` holds. Labels share the budget as evenly as their row counts
    allow (water-filling: a label with fewer rows than its share gives the rest to the others), so
    every label gets at least one row whenever the budget is at least the number of labels.
    `cover_labels` (the default) raises the budget to the number of labels in `history` when the
    fraction gives fewer rows: 77 known labels and a drift batch of 10 new rows at 0.3 would replay
    3 rows, so 74 labels would get no rehearsal at all, and a round whose early-stopping or golden set
    holds them could not be judged fairly; covering them costs 77 rows. A fraction of 0 with
    per_label 0 still turns replay off. The result does not depend on the order of `history`'s
    rows: rows are ordered by (snapshot, key) first.
    """
    _check_columns(history)
    if per_label < 0:
        raise ValueError(f"per_label must be >= 0, got {per_label}")
    budget = replay_budget(n_new_rows, fraction)
    n_labels = int(history["label"].nunique())
    budget = max(budget, per_label * n_labels)
    if cover_labels and (fraction > 0 or per_label > 0):
        budget = max(budget, n_labels)
    budget = min(budget, len(history))
    if budget == 0:
        return history.iloc[0:0].copy()
    rng = np.random.default_rng(seed)
    ordered = history.sort_values(["snapshot", "key"], kind="stable").reset_index(drop=True)
    counts = ordered["label"].value_counts().sort_index()
    quota = _water_fill(counts.to_numpy(), budget, rng)
    picks: list[np.ndarray] = []
    for label, take in zip(counts.index, quota, strict=True):
        rows = np.flatnonzero((ordered["label"] == label).to_numpy())
        picks.append(rng.choice(rows, size=int(take), replace=False))
    chosen = np.sort(np.concatenate(picks))
    return ordered.iloc[chosen].reset_index(drop=True)


def _water_fill(available: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Per-label quotas summing to `budget`, each <= available, as equal as possible.

    Find the highest level q with sum(min(available, q)) <= budget; every label takes min(available, q),
    and the few rows left over (fewer than the labels still above q, by q's maximality) go one each to
    labels chosen at random. Example: available [1, 5, 9], budget 8 -> q = 3 gives [1, 3, 3] = 7, one
    left -> [1, 4, 3] or [1, 3, 4].
    """
    lo, hi = 0, int(available.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if int(np.minimum(available, mid).sum()) <= budget:
            lo = mid
        else:
            hi = mid - 1
    quota = np.minimum(available, lo)
    left = budget - int(quota.sum())
    if left:
        room = np.flatnonzero(available > lo)
        quota[rng.choice(room, size=left, replace=False)] += 1
    return quota


def replay_manifest(selected: pd.DataFrame) -> dict[str, Any]:
    """Name every replayed row by (snapshot, key), with counts per label and a sha256 over the names."""
    _check_columns(selected)
    rows = [
        {"snapshot": str(s), "key": str(k)}
        for s, k in sorted(zip(selected["snapshot"], selected["key"], strict=True))
    ]
    per_label = {str(k): int(v) for k, v in selected["label"].value_counts().sort_index().items()}
    return {
        "version": MANIFEST_VERSION,
        "count": len(rows),
        "per_label": per_label,
        "rows": rows,
        "sha256": _rows_hash(rows),
    }


def apply_replay_manifest(history: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame:
    """Rebuild the replay set a manifest names from `history`; fails if any named row is gone."""
    _check_columns(history)
    rows = manifest["rows"]
    if _rows_hash(rows) != manifest.get("sha256"):
        raise ValueError("replay manifest does not match its sha256: it was edited or truncated.")
    names = list(zip(history["snapshot"].astype(str), history["key"].astype(str), strict=True))
    position = {name: i for i, name in enumerate(names)}
    missing = [row for row in rows if (row["snapshot"], row["key"]) not in position]
    if missing:
        raise KeyError(
            f"{len(missing)} replayed rows are not in the history given, e.g. snapshot "
            f"{missing[0]['snapshot']} key {missing[0]['key']}; pass the training rows of every earlier "
            "snapshot."
        )
    picked = history.iloc[[position[(row["snapshot"], row["key"])] for row in rows]]
    # The same row order as select_replay returns, so a rebuilt round sees identical data.
    return picked.sort_values(["snapshot", "key"], kind="stable").reset_index(drop=True)


def _rows_hash(rows: list[dict[str, str]]) -> str:
    text = json.dumps(rows, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _check_columns(frame: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"replay needs columns {list(REQUIRED)}; missing {missing}")
