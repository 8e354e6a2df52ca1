"""Class-incremental BANKING77 through the loop's own steps, beside a joint training (issue 14).

    .venv/bin/python benchmarks/continual.py            # 30, 40, 50, 60, 70, 77 intents, 40 rows each
    .venv/bin/python benchmarks/continual.py --quick    # smoke run: 10, 15, 20 intents, 16 rows (~4 min)
    .venv/bin/python benchmarks/continual.py --seed 29 --test-rows unused   # the headline (README)

Groundwork: it measures the loop as it is; it changes nothing in it.

Data: ../shared/data/banking77 (train.csv, test.csv; columns text, category). The 77 intents are put
in a seeded order; round 1 gets the first `--first` of them, every later round `--step` more, up to
all 77. Each intent gets `--rows` seeded training rows of train.csv (all of them where it has
fewer: contactless_not_working has 35).

Per round, in a fresh TUNELOOP_HOME (`--work`, or a new folder .tuneloop/bench/continual-*, kept):

1. the new intents' rows are written as a CSV (columns text, label) into the landing folder, then
   `ingest_step(settings, [path])` cuts a snapshot (golden rows and eval split as the defaults say);
2. `train_step(settings, snapshot_id=..., progress=False)` trains a round from the champion, with the
   default settings and the gates of registry/policy.yaml;
3. when the gate passes: `convert_step` (promotion requires conversion=passed, see
   steps/release.py's `promotion_problems`; its seconds are reported apart from training), then
   `promote_step`, as demo.py does for its first version. Later versions are promoted directly too:
   no canary, since there is no traffic here.

Approval: registry/policy.yaml has approval.auto_approve: false, so the script writes
`<work>/policy.yaml`, a copy of registry/policy.yaml with only approval.auto_approve set to true
(as registry/policy.demo.yaml does), and points the settings at it. Gates and every other field are
the shipped ones. Comments are not kept in the copy.

Scored on (`--test-rows`): `test` (default), every test.csv row of the intents seen so far; or
`unused`, up to 40 train.csv rows of each intent that the draw did not pick for training (seeded,
disjoint from the training rows). The settings were chosen by runs scored on test.csv (seeds 13 and
14), so only rows never looked at while choosing them give an honest headline: `unused` with a seed
no earlier run drew.

Measured per round, on those rows of the intents seen so far: the round's version's
accuracy and macro-F1 (its adapter downloaded from the registry, checksums verified), its accuracy on
the old intents (seen in earlier rounds) and on the new ones; forgetting = the previous champion's
accuracy minus the version's, in points, on the old intents the champion knows (a champion stalled at
an earlier round does not know every old intent); the gate verdict and reasons; train seconds (the
MLflow run's `train_seconds`) and the train step's wall seconds; replay rows (the version's tag);
convert seconds. The champion after the round is scored too (`champion_accuracy`): that is what
users get.

Joint: after each round, one `tuneloop.train.train_round` from the base model on every row seen so
far (80% of each intent's rows to train, 20% to early-stop on, seeded), with the same TrainConfig
the loop uses (`train_config(settings)`, so the same model, epochs and patience), scored on the same
test rows.

Prints a table, saves `<work>/continual.png` (both curves; skipped with a message without
matplotlib), and the last line is one JSON object: final_accuracy (the last round's version),
final_champion_accuracy, joint_accuracy (the last joint run), gap_points (joint - final, points),
rounds_refused, max_forgetting_points, train_seconds (per round), and `rounds` with the detail.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "banking77"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with train.csv and test.csv")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="a fresh TUNELOOP_HOME (default: a new .tuneloop/bench/continual-*)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 10 + 5 + 5 intents, 16 rows an intent"
    )
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--first", type=int, default=30, help="intents in round 1")
    parser.add_argument("--step", type=int, default=10, help="new intents per later round")
    parser.add_argument("--total", type=int, default=77, help="intents in the last round")
    parser.add_argument("--rows", type=int, default=40, help="training rows per intent")
    parser.add_argument(
        "--test-rows",
        choices=("test", "unused"),
        default="test",
        help="score on test.csv, or on train.csv rows the draw did not pick (never used to choose settings)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="default: the settings' epochs")
    parser.add_argument("--no-joint", action="store_true", help="skip the joint trainings")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a TrainConfig override for the loop's rounds, e.g. --set distill_weight=0 (repeatable; "
        "the joint trainings keep the settings' config, so their cache stays valid)",
    )
    parser.add_argument(
        "--joint-cache",
        type=Path,
        default=REPO / ".tuneloop" / "bench" / "joint-cache",
        help="folder of joint results, keyed by a hash of their rows and config: a joint training "
        "depends on neither the loop nor its overrides, so reruns reuse it (delete to retrain)",
    )
    args = parser.parse_args()
    if args.quick:
        # The settings' epochs (8, early stopping after `patience`): with 1-2 epochs round 1 is
        # refused by the gates, and the convert and promote steps would go untried.
        args.first, args.step, args.total, args.rows = 10, 5, 20, 16
    return args


def _epochs_run(run: Any) -> int | None:
    """Epochs the round ran: the length of its per-epoch metric history (logged at step = epoch)."""
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "epoch.eval_macro_f1")
    return max((m.step for m in history), default=None)


# Issue 14's targets, drawn on the plot: the last round within 2 points of joint, no round forgetting
# more than 3 points on its old intents.
TARGET_GAP_POINTS = 2.0
TARGET_FORGETTING_POINTS = 3.0


def round_sizes(first: int, step: int, total: int) -> list[int]:
    sizes = [min(first, total)]
    while sizes[-1] < total:
        sizes.append(min(sizes[-1] + step, total))
    return sizes


UNUSED_ROWS_PER_INTENT = 40  # `--test-rows unused`: 77 x 40 = 3,080 rows, test.csv's size


def load_data(
    data: Path, rows: int, seed: int, test_rows: str = "test"
) -> tuple[list[str], pd.DataFrame, pd.DataFrame]:
    """(intents in a seeded order, `rows` training rows per intent, the rows scored); column `label`.

    The scored rows are test.csv's, or (`unused`) up to UNUSED_ROWS_PER_INTENT train.csv rows per
    intent that were not picked for training. An intent with no unused row (one with fewer than
    `rows` in train.csv, all picked) is scored on nothing, and said so.
    """
    train = pd.read_csv(data / "train.csv").rename(columns={"category": "label"})[["text", "label"]]
    intents = sorted(train["label"].unique())
    order = [intents[i] for i in np.random.default_rng(seed).permutation(len(intents))]
    # Every row of an intent with fewer than `rows` (train.csv: contactless_not_working has 35).
    shuffled = train.sample(frac=1.0, random_state=seed)
    rank = shuffled.groupby("label").cumcount()
    picked = shuffled[rank < rows]
    if test_rows == "unused":
        test = shuffled[(rank >= rows) & (rank < rows + UNUSED_ROWS_PER_INTENT)]
        missing = sorted(set(intents) - set(test["label"]))
        if missing:
            print(f"no unused train.csv rows to score: {', '.join(missing)}", file=sys.stderr)
    else:
        test = pd.read_csv(data / "test.csv").rename(columns={"category": "label"})[["text", "label"]]
    return order, picked.reset_index(drop=True), test.reset_index(drop=True)


def write_policy(work: Path) -> Path:
    """registry/policy.yaml with approval.auto_approve set to true (nothing else changed)."""
    import yaml

    policy = yaml.safe_load((REPO / "registry" / "policy.yaml").read_text())
    policy["approval"]["auto_approve"] = True
    path = work / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def scores(y_true: list[str], y_pred: list[str]) -> dict[str, float | None]:
    from sklearn.metrics import f1_score

    if not y_true:
        return {"accuracy": None, "macro_f1": None}
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return {
        "accuracy": round(float((t == p).mean()), 4),
        "macro_f1": round(
            float(f1_score(t, p, labels=sorted(set(y_true)), average="macro", zero_division=0)), 4
        ),
    }


def predict_adapter(adapter_dir: Path, texts: list[str], max_length: int) -> tuple[list[str], list[str]]:
    """(predicted labels, the model's labels)."""
    from tuneloop.train.model import load_classifier
    from tuneloop.train.predict import predict_logits

    model, tokenizer, labels = load_classifier(adapter_dir)
    logits = predict_logits(model, tokenizer, texts, max_length=max_length)
    return [labels[i] for i in logits.argmax(axis=1)], list(labels)


class VersionScorer:
    """Predictions of registered versions on the test rows, cached per version."""

    def __init__(self, settings: Any, test: pd.DataFrame, max_length: int, scratch: Path) -> None:
        self.settings, self.test, self.max_length, self.scratch = settings, test, max_length, scratch
        self.cache: dict[str, tuple[dict[str, str], set[str]]] = {}

    def predictions(self, version: str) -> tuple[dict[str, str], set[str]]:
        """({test text: predicted label} over all test rows, the labels the version knows)."""
        if version not in self.cache:
            from tuneloop.registry.store import Registry

            target = self.scratch / f"v{version}"
            adapter = Registry(self.settings).download(version, "adapter", target, verify=True)
            texts = self.test["text"].tolist()
            pred, labels = predict_adapter(adapter, texts, self.max_length)
            self.cache[version] = (dict(zip(texts, pred, strict=True)), set(labels))
        return self.cache[version]

    def share_predicted_as(self, version: str, intents: list[str], others: list[str]) -> float:
        """Share of the test rows of `intents` that the version predicts as one of `others`.

        For old intents and this round's new ones: the bias towards new labels that a round trained on
        many new rows and few replayed ones picks up (train/trainer.py, `_label_weights`)."""
        rows = self.test[self.test["label"].isin(intents)]
        pred, _ = self.predictions(version)
        wanted = set(others)
        return round(float(np.mean([pred[t] in wanted for t in rows["text"]])), 4)

    def score(self, version: str, intents: list[str]) -> dict[str, float | None]:
        rows = self.test[self.test["label"].isin(intents)]
        pred, _ = self.predictions(version)
        return scores(rows["label"].tolist(), [pred[t] for t in rows["text"]])


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings -> TrainConfig overrides, each value parsed as YAML (0.5, 8, [query, value])."""
    import yaml

    from tuneloop.train.config import TrainConfig

    known = set(TrainConfig.help())
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            sys.exit(f"--set {pair!r}: expected KEY=VALUE with KEY one of {sorted(known)}")
        out[key] = yaml.safe_load(value)
    return out


def joint_cached(
    seen: pd.DataFrame, test: pd.DataFrame, cfg: Any, seed: int, out: Path, cache: Path
) -> dict[str, Any]:
    """`joint_round`, or its stored result for the same rows, config and seed."""
    import hashlib

    payload = json.dumps(
        [sorted(zip(seen["text"], seen["label"], strict=True)), cfg.to_dict(), seed, len(test)]
    )
    path = cache / f"{hashlib.sha256(payload.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        return json.loads(path.read_text()) | {"cached": True}
    result = joint_round(seen, test, cfg, seed, out)
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def joint_round(seen: pd.DataFrame, test: pd.DataFrame, cfg: Any, seed: int, out: Path) -> dict[str, Any]:
    """One train_round from the base model on every row seen so far, scored on the seen test rows."""
    from tuneloop.train import train_round

    rank = seen.sample(frac=1.0, random_state=seed).groupby("label").cumcount()
    size = seen.groupby("label")["label"].transform("size").loc[rank.index]
    shuffled = seen.loc[rank.index]
    held_mask = rank >= (size * 0.8).round().astype(int)
    fit, held = shuffled[~held_mask], shuffled[held_mask]
    labels = sorted(seen["label"].unique())
    result = train_round(fit, held, labels, out, cfg, progress=False)
    rows = test[test["label"].isin(labels)]
    pred, _ = predict_adapter(result.adapter_dir, rows["text"].tolist(), cfg.max_length)
    return {
        "train_rows": len(fit),
        "stop_eval_rows": len(held),
        "train_seconds": round(result.train_seconds, 1),
        "epochs_run": result.epochs_run,
        **scores(rows["label"].tolist(), pred),
    }


def cumulative_forgetting(scorer: VersionScorer, version: str, learnt_by: dict[str, str]) -> dict[str, Any]:
    """Forgetting of every intent since the version that learnt it: that version's accuracy on its
    rows minus `version`'s, pooled (points), and the intent that lost most. Intents `version` itself
    learnt (or that no promoted version knew yet) are left out."""
    earlier = {intent: v for intent, v in learnt_by.items() if v != version}
    if not earlier:
        return {"cumulative_forgetting_points": None}
    now, _ = scorer.predictions(version)
    then_right, now_right, worst = 0, 0, (None, 0.0)
    for intent, learnt in earlier.items():
        rows = scorer.test[scorer.test["label"] == intent]
        if rows.empty:
            continue
        then, _ = scorer.predictions(learnt)
        before = sum(then[t] == intent for t in rows["text"])
        after = sum(now[t] == intent for t in rows["text"])
        then_right, now_right = then_right + before, now_right + after
        drop = 100.0 * (before - after) / len(rows)
        if worst[0] is None or drop > worst[1]:
            worst = (intent, drop)
    n = sum(int((scorer.test["label"] == intent).sum()) for intent in earlier)
    return {
        "cumulative_forgetting_points": round(100.0 * (then_right - now_right) / n, 2) if n else None,
        "worst_intent": worst[0],
        "worst_intent_forgetting_points": round(worst[1], 1),
        "cumulative_judged_intents": len(earlier),
    }


def run_round(
    settings: Any,
    index: int,
    new: list[str],
    old: list[str],
    rows: pd.DataFrame,
    scorer: VersionScorer,
    overrides: dict[str, Any],
    learnt_by: dict[str, str],
) -> dict[str, Any]:
    import mlflow

    from tuneloop.registry.policy import load_policy
    from tuneloop.registry.store import Registry
    from tuneloop.steps.convert import convert_step
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.release import promote_step, promotion_problems
    from tuneloop.steps.round import train_step

    landing = settings.landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    path = landing / f"round-{index:02d}.csv"
    rows[rows["label"].isin(new)][["text", "label"]].to_csv(path, index=False)
    ingested = ingest_step(settings, [path])
    snapshot = ingested.get("snapshot")
    if not snapshot:
        raise RuntimeError(f"round {index}: ingest cut no snapshot: {ingested.get('message')}")

    registry = Registry(settings)
    champion = registry.alias("champion")
    started = time.perf_counter()
    trained = train_step(settings, snapshot_id=snapshot, progress=False, **overrides)
    wall = time.perf_counter() - started
    version = str(trained["version"])
    info = registry.get_version(version)
    run = mlflow.get_run(str(trained["run_id"])) if trained.get("run_id") else None
    train_seconds = run.data.metrics.get("train_seconds") if run else None
    seen = old + new
    row: dict[str, Any] = {
        "round": index,
        "intents": len(seen),
        "new_intents": len(new),
        "snapshot": snapshot,
        "ingest": {k: ingested.get(k) for k in ("rows", "accepted", "duplicates", "quarantined", "split")},
        "version": version,
        "parent_version": trained.get("parent_version"),
        "gate": "passed" if trained["gate"]["passed"] else "refused",
        "reasons": list(trained["gate"]["reasons"]),
        "loop_metrics": trained.get("metrics"),
        "train_seconds": round(float(train_seconds), 1) if train_seconds is not None else None,
        "train_step_wall_seconds": round(wall, 1),
        "best_epoch": int(run.data.metrics["best_epoch"]) if run else None,
        "epochs_run": _epochs_run(run) if run else None,
        "train_rows": int(run.data.params["train_rows"]) if run and "train_rows" in run.data.params else None,
        "replay_rows": int(info.tags.get("replay_rows", "0") or 0),
        **scorer.score(version, seen),
        "old_accuracy": scorer.score(version, old)["accuracy"] if old else None,
        "new_accuracy": scorer.score(version, new)["accuracy"],
        "old_as_new": scorer.share_predicted_as(version, old, new) if old else None,
        "forgetting_points": None,
        "convert_seconds": None,
        "outcome": "refused",
    }
    if champion is not None and old:
        _, known = scorer.predictions(champion.version)
        judged = [label for label in old if label in known]
        before = scorer.score(champion.version, judged)["accuracy"]
        after = scorer.score(version, judged)["accuracy"]
        if before is not None and after is not None:
            row["champion_old_accuracy"] = before
            row["forgetting_points"] = round(100 * (before - after), 2)
            row["forgetting_judged_intents"] = len(judged)
    row.update(cumulative_forgetting(scorer, version, learnt_by))
    if trained["gate"]["passed"]:
        started = time.perf_counter()
        converted = convert_step(settings, version)
        row["convert_seconds"] = round(time.perf_counter() - started, 1)
        row["conversion_passed"] = bool(converted["parity"]["passed"])
        problems = promotion_problems(registry.get_version(version), load_policy(settings.policy_path))
        if problems:
            row["outcome"] = "not promoted: " + "; ".join(problems)
        else:
            promote_step(settings, version, reason=f"benchmarks/continual.py round {index}", by="benchmark")
            row["outcome"] = "promoted"
    now = registry.alias("champion")
    if now is not None:
        _, known = scorer.predictions(now.version)
        for intent in known:
            learnt_by.setdefault(intent, now.version)  # the first promoted version that knows it
    row["champion_after"] = now.version if now else None
    row["champion_accuracy"] = scorer.score(now.version, seen)["accuracy"] if now else None
    return row


def save_plot(rounds: list[dict[str, Any]], path: Path) -> str:
    """Two panels: accuracy of loop and joint (the 2-point target shaded under joint), forgetting.

    The accuracy axis is zoomed to the data: every curve here sits between 0.85 and 0.93, and on a
    0-1 axis a 3-point gap is 3% of the height.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed"
    x = [r["intents"] for r in rounds]
    fig, (ax, fx) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    ax.plot(x, [r["accuracy"] for r in rounds], "o-", label="round's version (loop)")
    ax.plot(x, [r["champion_accuracy"] for r in rounds], "s--", label="champion after the round")
    joint = [r.get("joint", {}).get("accuracy") for r in rounds]
    values = [v for r in rounds for v in (r["accuracy"], r["champion_accuracy"]) if v is not None]
    if all(j is not None for j in joint):
        ax.plot(x, joint, "^-", label="joint training")
        low = [j - TARGET_GAP_POINTS / 100 for j in joint]
        ax.fill_between(x, low, joint, color="tab:green", alpha=0.12, label="within 2 points of joint")
        values += low + joint
    ax.set_xlabel("intents seen")
    ax.set_ylabel("held-out accuracy (seen intents)")
    ax.set_title("BANKING77 class-incremental: loop vs joint")
    if values:
        ax.set_ylim(max(0.0, min(values) - 0.03), min(1.0, max(values) + 0.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    later = [r for r in rounds if r["forgetting_points"] is not None]
    fx.bar(
        [r["intents"] for r in later],
        [r["forgetting_points"] for r in later],
        width=5,
        label="vs the champion",
    )
    since = [r for r in rounds if r.get("cumulative_forgetting_points") is not None]
    fx.plot(
        [r["intents"] for r in since],
        [r["cumulative_forgetting_points"] for r in since],
        "o-",
        color="tab:orange",
        label="since each intent was learnt",
    )
    fx.axhline(TARGET_FORGETTING_POINTS, color="tab:red", ls="--", label="target: at most 3 points")
    fx.axhline(0, color="black", lw=0.8)
    fx.set_xlabel("intents seen")
    fx.set_ylabel("forgetting on old intents (points)")
    fx.set_title("accuracy lost on the old intents")
    fx.grid(alpha=0.3, axis="y")
    fx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"plot: {path}"


def fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rounds: list[dict[str, Any]]) -> None:
    print(
        f"{'round':>5} {'intents':>7} {'gate':>8} {'acc':>6} {'F1':>6} {'old':>6} {'new':>6} "
        f"{'forget':>7} {'cumul':>6} {'old>new':>7} {'champ':>6} {'joint':>6} {'train s':>8} {'epochs':>6} "
        f"{'conv s':>7} {'replay':>6}"
    )
    for r in rounds:
        print(
            f"{r['round']:>5} {r['intents']:>7} {r['gate']:>8} {fmt(r['accuracy']):>6} "
            f"{fmt(r['macro_f1']):>6} {fmt(r['old_accuracy']):>6} {fmt(r['new_accuracy']):>6} "
            f"{fmt(r['forgetting_points'], '.1f'):>7} {fmt(r['cumulative_forgetting_points'], '.1f'):>6} "
            f"{fmt(r['old_as_new']):>7} "
            f"{fmt(r['champion_accuracy']):>6} "
            f"{fmt(r.get('joint', {}).get('accuracy')):>6} {fmt(r['train_seconds'], '.0f'):>8} "
            f"{fmt(r.get('best_epoch'), 'd') + '/' + fmt(r.get('epochs_run'), 'd'):>6} "
            f"{fmt(r['convert_seconds'], '.0f'):>7} {r['replay_rows']:>6}"
        )
        for reason in r["reasons"]:
            print(f"        - {reason}")


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.work is None:
        base = REPO / ".tuneloop" / "bench"
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="continual-", dir=base))
    else:
        work = args.work.resolve()
        if (work / "snapshots").exists():
            sys.exit(f"{work} already holds a TUNELOOP_HOME; give a fresh --work folder")
    work.mkdir(parents=True, exist_ok=True)
    print(f"TUNELOOP_HOME: {work}", file=sys.stderr, flush=True)
    os.environ["TUNELOOP_HOME"] = str(work)
    policy = write_policy(work)
    os.environ["TUNELOOP_POLICY_PATH"] = str(policy)

    import mlflow

    from tuneloop.config import load_settings
    from tuneloop.steps.round import train_config

    settings = load_settings(home=work, policy_path=policy)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    joint_overrides: dict[str, Any] = {"epochs": args.epochs} if args.epochs else {}
    overrides = joint_overrides | parse_overrides(args.overrides)
    cfg = train_config(settings, **joint_overrides)
    order, rows, test = load_data(args.data, args.rows, args.seed, args.test_rows)
    sizes = round_sizes(args.first, args.step, args.total)
    scorer = VersionScorer(settings, test, cfg.max_length, work / "bench" / "versions")
    started = time.perf_counter()
    rounds: list[dict[str, Any]] = []
    learnt_by: dict[str, str] = {}
    for index, size in enumerate(sizes, start=1):
        old = order[: sizes[index - 2]] if index > 1 else []
        new = order[len(old) : size]
        print(f"round {index}: {len(old)} old + {len(new)} new intents", file=sys.stderr, flush=True)
        row = run_round(settings, index, new, old, rows, scorer, overrides, learnt_by)
        rounds.append(row)
        print(
            f"round {index}: v{row['version']} gate {row['gate']}, accuracy {fmt(row['accuracy'])}, "
            f"forgetting {fmt(row['forgetting_points'], '.1f')} points "
            f"(cumulative {fmt(row['cumulative_forgetting_points'], '.1f')}), "
            f"train {row['train_seconds']} s, "
            f"{row['outcome']}",
            file=sys.stderr,
            flush=True,
        )
    # Joint trainings after every loop round: they do not depend on the loop, so the loop's train
    # seconds are measured back to back on a machine doing nothing else.
    for index, row in enumerate(rounds if not args.no_joint else [], start=1):
        seen_rows = rows[rows["label"].isin(order[: row["intents"]])]
        out = work / "bench" / f"joint-{index:02d}"
        row["joint"] = joint_cached(seen_rows, test, cfg, args.seed, out, args.joint_cache)
        print(
            f"joint {index}: {row['intents']} intents, accuracy {fmt(row['joint']['accuracy'])}",
            file=sys.stderr,
            flush=True,
        )

    print_table(rounds)
    plot = work / "continual.png"
    print(save_plot(rounds, plot))
    last = rounds[-1]
    joint_accuracy = last.get("joint", {}).get("accuracy")
    forgetting = [r["forgetting_points"] for r in rounds if r["forgetting_points"] is not None]
    cumulative = [
        r["cumulative_forgetting_points"] for r in rounds if r["cumulative_forgetting_points"] is not None
    ]
    summary = {
        "benchmark": "continual",
        "quick": args.quick,
        "seed": args.seed,
        "round_sizes": sizes,
        "rows_per_intent": args.rows,
        "train_config": cfg.to_dict(),
        "policy": "registry/policy.yaml with approval.auto_approve: true",
        "final_accuracy": last["accuracy"],
        "final_champion_accuracy": last["champion_accuracy"],
        "joint_accuracy": joint_accuracy,
        "gap_points": (
            round(100 * (joint_accuracy - last["accuracy"]), 2) if joint_accuracy is not None else None
        ),
        "rounds_refused": sum(r["gate"] == "refused" for r in rounds),
        "max_forgetting_points": max(forgetting) if forgetting else None,
        "max_cumulative_forgetting_points": max(cumulative) if cumulative else None,
        "final_cumulative_forgetting_points": last["cumulative_forgetting_points"],
        "test_rows": args.test_rows,
        "scored_rows": len(test),
        "train_seconds": [r["train_seconds"] for r in rounds],
        "convert_seconds": [r["convert_seconds"] for r in rounds],
        "work": str(work),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "overrides": overrides,
        "rounds": rounds,
    }
    summary["mlflow_run_id"] = log_to_mlflow(settings, summary, plot)
    print(json.dumps(summary, default=str))


def log_to_mlflow(settings: Any, summary: dict[str, Any], plot: Path) -> str:
    """One run in the work store's `benchmarks` experiment: per-round curves, the plot, the JSON."""
    import mlflow

    from tuneloop.registry.store import Registry

    experiment = Registry(settings).experiment_id("benchmarks")
    with mlflow.start_run(experiment_id=experiment, run_name="continual") as run:
        mlflow.log_params(
            {
                "round_sizes": summary["round_sizes"],
                "rows_per_intent": summary["rows_per_intent"],
                "seed": summary["seed"],
                "test_rows": summary["test_rows"],
                "overrides": json.dumps(summary["overrides"]) or "{}",
            }
        )
        for r in summary["rounds"]:
            values = {
                "accuracy": r["accuracy"],
                "champion_accuracy": r["champion_accuracy"],
                "joint_accuracy": r.get("joint", {}).get("accuracy"),
                "forgetting_points": r["forgetting_points"],
                "cumulative_forgetting_points": r["cumulative_forgetting_points"],
                "train_seconds": r["train_seconds"],
                "refused": float(r["gate"] == "refused"),
            }
            mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None}, step=r["intents"])
        finals = ("final_accuracy", "joint_accuracy", "gap_points", "rounds_refused", "max_forgetting_points")
        mlflow.log_metrics({k: float(summary[k]) for k in finals if summary[k] is not None})
        if plot.is_file():
            mlflow.log_artifact(str(plot), "plots")
        mlflow.log_dict(summary, "continual.json")
        return str(run.info.run_id)


if __name__ == "__main__":
    main()
