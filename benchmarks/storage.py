"""Storage over many rounds: what a version keeps, what gc frees, and whether the home stays flat (issue 24).

    .venv/bin/python benchmarks/storage.py                 # 8 rounds of real MiniLM on BANKING77 drops
    .venv/bin/python benchmarks/storage.py --rounds 6      # the README's run
    .venv/bin/python benchmarks/storage.py --quick         # tiny random BERT, 20 rounds: flatness smoke run
    .venv/bin/python benchmarks/storage.py --demo          # also `tuneloop demo` in a fresh home, measured
    .venv/bin/python benchmarks/storage.py --demo-home .tuneloop --rounds 0   # only measure a demo's home

A fresh temporary TUNELOOP_HOME (embedded defaults: SQLite MLflow, artifacts under <home>/mlartifacts)
and a policy written from registry/policy.yaml with two changes: approval.auto_approve true (no
person here) and retention.min_age_days 0 (so gc acts within the run; keep_whole_behind_aliases and
the collect patterns stay as shipped). Each round, through the steps in process:

1. a drop lands: the next consecutive slice, per intent, of a seeded shuffle of BANKING77 train.csv
   (a seeded subset of intents; the first drop is larger, so round 1 has rows to learn from), or in
   `--quick` keyword sentences (src/tuneloop/testing.py) the tiny model can learn; `ingest_step`;
2. `train_step` (from the champion), and for a version that passed its gates `convert_step`;
3. every other passing version is promoted with `promote_step`, directly (no canary: no service
   here), so the old champion becomes `previous`; the others stay `challenger`, then are superseded;
4. one round (`--refuse-round`, default 4) lands its drop with the labels shuffled among its rows:
   the gates refuse it (its own eval rows score about chance, under the 0.70 floor), and its
   snapshot is then excluded (`exclude_step`) as an operator would, so later rounds do not train
   on it again;
5. `gc_step` (not a dry run), timed; then the home is measured.

Measured after each round's gc: bytes under the home (every file, apparent sizes, links not
followed), under the MLflow artifact root (inside the home by default), under <home>/work/
(scratch), and each version's stored bytes (every file of its run, from the artifact listing) by
kind: serving (champion), previous, collected (tagged gc_collected), refused (gates failed, not
collected), kept (any other whole version: challenger, or among the newest behind the aliases).

Growth beyond the retained set: after round r's gc, residual_r = total_r - retained_r, where
total_r is the home's bytes (plus the artifact root's when it lies outside the home) and retained_r
the bytes of every version not collected (the whole ones, which retention bounds by count). What is
left in the residual grows without bound: collected versions' lineage, snapshots, ledger, the
MLflow database. `growth_bytes_per_round_after_gc` is the least-squares slope of residual_r over the
last half of the rounds (at least 3); `max_growth_bytes_per_round_after_gc` the largest single
step residual_r - residual_(r-1) after round 1; `growth_bytes_per_round_first_half` the slope over
the first half, for flatness.

At the end: `rollback_step` (champion back to previous), then the service's read path loads the new
champion (`RegistrySource.load`, checksums verified, best backend) and predicts, and
`tuneloop.model.load("models:/<name>/<v>")` (MLflow pyfunc, verified) predicts; and a collected
version is refused by name when the service tries to load it.

`--demo` runs `tuneloop demo --json` (as benchmarks/demo.py does) in another fresh home and measures
it as the demo leaves it (`home_bytes_after_demo`; the demo ends with its own gc), then runs gc under
the demo policy once more and measures again; `--demo-home PATH` measures an existing home instead,
with a dry-run gc (nothing removed). Without either, `home_bytes_after_demo` is null.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "banking77"
MB = 1e6
# Issue 24's targets.
TARGET_DEMO_HOME_BYTES = 500 * MB
TARGET_COLLECTED_BYTES = 5 * MB
TARGET_GROWTH_BYTES = 10 * MB
KIND_ORDER = ("serving", "previous", "kept", "refused", "collected")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with BANKING77 train.csv")
    p.add_argument("--rounds", type=int, default=None, help="rounds of the loop (default 8; --quick 20)")
    p.add_argument("--quick", action="store_true", help="tiny random BERT and keyword drops: smoke run")
    p.add_argument("--intents", type=int, default=10, help="BANKING77 intents in every drop")
    p.add_argument("--first-rows", type=int, default=40, help="rows per intent in the first drop")
    p.add_argument("--rows", type=int, default=16, help="rows per intent in every later drop")
    p.add_argument("--refuse-round", type=int, default=4, help="the round whose drop has shuffled labels")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--keep", action="store_true", help="keep the temporary homes and print where")
    p.add_argument("--demo", action="store_true", help="also run `tuneloop demo` in a fresh home, measured")
    p.add_argument("--demo-home", type=Path, default=None, help="measure this existing demo home (dry gc)")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 20 if args.quick else 8
    return args


# --- data -------------------------------------------------------------------------------------------


def banking77_drops(
    data: Path, intents: int, first: int, rows: int, rounds: int, seed: int
) -> list[pd.DataFrame]:
    """`rounds` drops of consecutive slices, per intent, of a seeded shuffle of train.csv: drop 1
    takes `first` rows of each intent, every later drop the next `rows`. Intents are a seeded pick
    among those with enough rows for every drop."""
    train = pd.read_csv(data / "train.csv").rename(columns={"category": "label"})[["text", "label"]]
    need = first + rows * max(rounds - 1, 0)
    counts = train["label"].value_counts()
    able = sorted(counts[counts >= need].index)
    if len(able) < intents:
        raise SystemExit(f"only {len(able)} intents have {need} rows; use fewer rounds or rows")
    picked = [able[i] for i in np.random.default_rng(seed).permutation(len(able))[:intents]]
    shuffled = train[train["label"].isin(picked)].sample(frac=1.0, random_state=seed)
    rank = shuffled.groupby("label").cumcount()
    bounds = [0] + [first + rows * i for i in range(rounds)]  # rounds 0: no drop
    return [
        shuffled[(rank >= lo) & (rank < hi)].reset_index(drop=True)
        for lo, hi in zip(bounds, bounds[1:], strict=False)
    ]


def keyword_drops(first: int, rows: int, rounds: int, seed: int) -> list[pd.DataFrame]:
    """Keyword sentences of the 4 test labels, a new seed per drop (the tiny model learns these)."""
    from tuneloop.testing import KEYWORDS, keyword_sentences

    labels = sorted(KEYWORDS)
    return [
        keyword_sentences(labels, first if i == 0 else rows, seed=seed + i, length=6) for i in range(rounds)
    ]


def poison(drop: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The same texts, labels shuffled among the rows (as a broken labelling job would)."""
    out = drop.copy()
    out["label"] = np.random.default_rng(seed).permutation(out["label"].to_numpy())
    return out


# --- measuring --------------------------------------------------------------------------------------


def du(path: Path) -> int:
    """Apparent bytes of every file under `path` (0 when absent); links are not followed."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def kind_of(info: Any) -> str:
    from tuneloop.registry.retention import GC_TAG

    if "champion" in info.aliases or "canary" in info.aliases:
        return "serving"
    if "previous" in info.aliases:
        return "previous"
    if GC_TAG in info.tags:
        return "collected"
    return "kept" if info.gate_passed else "refused"


def measure_home(settings: Any) -> dict[str, Any]:
    """Home, artifact root and scratch bytes, and every version's stored bytes and kind."""
    from tuneloop.registry.store import Registry

    registry = Registry(settings)
    home = settings.home_dir
    root = settings.resolved_artifact_root or ""
    artifacts = Path(root.removeprefix("file://")) if root.startswith(("file:", "/")) else None
    inside = artifacts is not None and artifacts.resolve().is_relative_to(home)
    versions = []
    for info in registry.versions():
        stored = sum(registry.run_files(info.run_id).values()) if info.run_id else 0
        versions.append(
            {"version": info.version, "kind": kind_of(info), "aliases": sorted(info.aliases), "bytes": stored}
        )
    work = settings.work_dir
    home_bytes = du(home)
    artifact_bytes = du(artifacts) if artifacts is not None else None
    by_kind: dict[str, dict[str, Any]] = {}
    for kind in KIND_ORDER:
        sizes = [v["bytes"] for v in versions if v["kind"] == kind]
        if sizes:
            by_kind[kind] = {
                "count": len(sizes),
                "mean": int(np.mean(sizes)),
                "max": max(sizes),
                "total": sum(sizes),
            }
    return {
        "home_bytes": home_bytes,
        "artifact_store_bytes": artifact_bytes,
        "total_bytes": home_bytes + (0 if inside or artifact_bytes is None else artifact_bytes),
        "scratch_bytes": du(work),
        "scratch_left": sorted(str(p.relative_to(work)) for p in work.glob("*/*")) if work.is_dir() else [],
        "retained_bytes": sum(v["bytes"] for v in versions if v["kind"] != "collected"),
        "versions": versions,
        "by_kind": by_kind,
    }


def slope(values: list[float]) -> float | None:
    """Least-squares slope per round of `values` (one per consecutive round); None under 2 points."""
    if len(values) < 2:
        return None
    return float(np.polyfit(np.arange(len(values)), np.asarray(values, dtype=float), 1)[0])


# --- the loop ---------------------------------------------------------------------------------------


def write_policy(folder: Path) -> Path:
    """registry/policy.yaml with approval.auto_approve true and retention.min_age_days 0."""
    policy = yaml.safe_load((REPO / "registry" / "policy.yaml").read_text())
    policy["approval"]["auto_approve"] = True
    policy["retention"]["min_age_days"] = 0
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def run_round(settings: Any, index: int, drop: pd.DataFrame, refuse: bool, promote: bool) -> dict[str, Any]:
    """Land, ingest, train, convert (when passed), promote (when asked), gc; figures of each."""
    from tuneloop.steps.convert import convert_step
    from tuneloop.steps.exclusions import exclude_step
    from tuneloop.steps.gc import gc_step
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.release import promote_step, release_problems
    from tuneloop.steps.round import train_step

    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    path = settings.landing_dir / f"drop-{index:02d}.csv"
    drop.to_csv(path, index=False)
    snapshot = ingest_step(settings, [path]).get("snapshot")
    if not snapshot:
        raise RuntimeError(f"round {index}: ingest cut no snapshot")
    row: dict[str, Any] = {"round": index, "rows": len(drop), "snapshot": snapshot, "poisoned": refuse}
    started = time.perf_counter()
    trained = train_step(settings, snapshot_id=snapshot, progress=False)
    row.update(version=str(trained["version"]), train_s=round(time.perf_counter() - started, 1))
    row["gate"] = "passed" if trained["gate"]["passed"] else "refused"
    row["reasons"] = list(trained["gate"]["reasons"])
    row["outcome"] = row["gate"]
    if trained["gate"]["passed"]:
        started = time.perf_counter()
        converted = convert_step(settings, row["version"])
        row["convert_s"] = round(time.perf_counter() - started, 1)
        row["conversion"] = "passed" if converted["parity"]["passed"] else "failed"
        problems = release_problems(settings, row["version"])
        if promote and not problems:
            promote_step(
                settings, row["version"], reason=f"benchmarks/storage.py round {index}", by="benchmark"
            )
            row["outcome"] = "promoted"
        elif problems:
            row["outcome"] = "not promotable: " + "; ".join(problems)
        else:
            row["outcome"] = "passed, not promoted"
    elif refuse:
        exclude_step(settings, snapshot, reason="benchmarks/storage.py: labels shuffled", by="benchmark")
    started = time.perf_counter()
    gc = gc_step(settings, by="benchmark")
    row["gc_s"] = round(time.perf_counter() - started, 2)
    row["gc_freed_bytes"] = gc["bytes"]
    row["gc_collected"] = [v["version"] for v in gc["versions"] if v["action"] == "collect"]
    return row


def check_rollback(settings: Any) -> dict[str, Any]:
    """Champion back to previous after gc; the service's loader and MLflow's verified pyfunc loader
    both serve the restored champion; a collected version is refused by name."""
    import tuneloop.model
    from tuneloop.registry.store import Registry, RegistryError
    from tuneloop.serve.settings import ServeSettings
    from tuneloop.steps.rollout_state import rollback_step
    from tuneloop.steps.serve import RegistrySource

    text = "I was charged twice for the same payment"
    registry = Registry(settings)
    out: dict[str, Any] = {"ok": False}
    try:
        out["rollback"] = rollback_step(
            settings, reason="benchmarks/storage.py: rollback after gc", by="benchmark"
        )
        champion = out["rollback"]["champion"]
        source = RegistrySource(settings, ServeSettings(), threads=1)
        loaded = source.load(champion)
        out["service_backend"] = loaded.backend
        out["service_prediction"] = loaded.predictor.labels[
            int(np.argmax(loaded.predictor.predict_proba([text])[0]))
        ]
        model = tuneloop.model.load(f"models:/{settings.model_name}/{champion}")
        out["pyfunc_prediction"] = str(model.predict([text])["label"].iloc[0])
        out["predictions_agree"] = out["pyfunc_prediction"] == out["service_prediction"]
        out["ok"] = True
        collected = [i.version for i in registry.versions() if kind_of(i) == "collected"]
        if collected:
            try:
                source.load(collected[0])
                out["collected_refused"] = False
            except RegistryError as exc:
                out["collected_refused"] = "gc" in str(exc)
    except Exception as exc:  # recorded as a missed target, with the reason
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def measure_demo(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """`tuneloop demo` in a fresh home (or `--demo-home`), measured before and after gc."""
    from demo import run_demo  # benchmarks/demo.py
    from tuneloop.config import PROJECT_ROOT, load_settings
    from tuneloop.steps.gc import gc_step

    if args.demo_home is not None:
        home, seconds, dry = args.demo_home.resolve(), None, True
    else:
        home, dry = tmp / "demo-home", False
        _, seconds = run_demo(Path(sys.executable).parent / "tuneloop", home, quick=False)
    settings = load_settings(home=home, policy_path=PROJECT_ROOT / "registry" / "policy.demo.yaml")
    _use_store(settings)
    before = measure_home(settings)
    gc = gc_step(settings, dry_run=dry, by="benchmark")
    after = None if dry else measure_home(settings)
    return {
        "home": str(home),
        "demo_seconds": round(seconds, 1) if seconds else None,
        "home_bytes": before["home_bytes"],
        "by_kind": before["by_kind"],
        "scratch_bytes": before["scratch_bytes"],
        "gc_dry_run": dry,
        "gc_bytes": gc["bytes"],
        "home_bytes_after_gc": after["home_bytes"] if after else before["home_bytes"] - gc["bytes"],
        "by_kind_after_gc": after["by_kind"] if after else None,
    }


def _use_store(settings: Any) -> None:
    import mlflow

    os.environ["TUNELOOP_HOME"] = str(settings.home_dir)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_registry_uri)


# --- the run and its report -------------------------------------------------------------------------


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from tuneloop.config import load_settings

    policy = write_policy(tmp)
    os.environ["TUNELOOP_POLICY_PATH"] = str(policy)
    if args.quick:
        from tuneloop.testing import tiny_loop_settings

        # The tiny model lives in tmp/tiny: loading it from there must be allowed (train/base.py).
        os.environ["TUNELOOP_ALLOWED_MODEL_ROOTS"] = str(tmp.resolve())
        settings = tiny_loop_settings(tmp, policy_path=policy)  # home: tmp/home
        drops = keyword_drops(args.first_rows, args.rows, args.rounds, args.seed)
    else:
        settings = load_settings(home=tmp / "home", policy_path=policy)
        drops = banking77_drops(args.data, args.intents, args.first_rows, args.rows, args.rounds, args.seed)
    _use_store(settings)
    rounds: list[dict[str, Any]] = []
    passed = 0
    started = time.perf_counter()
    for index, drop in enumerate(drops, start=1):
        refuse = index == args.refuse_round
        # Every other passing version is promoted, the first one included (a champion to start from).
        promote = not refuse and passed % 2 == 0
        row = run_round(settings, index, poison(drop, args.seed) if refuse else drop, refuse, promote)
        passed += row["gate"] == "passed"
        state = measure_home(settings)
        row.update({k: v for k, v in state.items() if k != "versions"})
        row["residual_bytes"] = state["total_bytes"] - state["retained_bytes"]
        rounds.append(row)
        print(
            f"round {index}: v{row['version']} {row['outcome']}; train {row['train_s']} s, "
            f"convert {row.get('convert_s', '-')} s, gc {row['gc_s']} s "
            f"(freed {row['gc_freed_bytes'] / MB:.0f} MB); "
            f"home {state['home_bytes'] / MB:.0f} MB, scratch {state['scratch_bytes'] / MB:.1f} MB",
            file=sys.stderr,
            flush=True,
        )
    loop_seconds = time.perf_counter() - started
    final = measure_home(settings) if rounds else None
    rollback = check_rollback(settings) if rounds else None
    demo = measure_demo(args, tmp) if args.demo or args.demo_home else None
    return summarize(args, settings, rounds, final, rollback, demo, loop_seconds, tmp)


def _kind_figure(state: dict[str, Any] | None, kind: str, key: str = "mean") -> int | None:
    if state is None or kind not in state["by_kind"]:
        return None
    return int(state["by_kind"][kind][key])


def summarize(
    args: argparse.Namespace,
    settings: Any,
    rounds: list[dict[str, Any]],
    final: dict[str, Any] | None,
    rollback: dict[str, Any] | None,
    demo: dict[str, Any] | None,
    loop_seconds: float,
    tmp: Path,
) -> dict[str, Any]:
    from host import cpu_description

    residual = [r["residual_bytes"] for r in rounds]
    half = max(3, len(residual) // 2)
    steps = [b - a for a, b in zip(residual, residual[1:], strict=False)]
    refused = [r for r in rounds if r["gate"] == "refused"]
    growth = slope(residual[-half:])
    return {
        "benchmark": "storage",
        "quick": args.quick,
        "rounds": len(rounds),
        "model": settings.base_model,
        "data": "keyword sentences (4 labels)" if args.quick else f"BANKING77, {args.intents} intents",
        "rows_per_intent": {"first": args.first_rows, "later": args.rows},
        "policy": "registry/policy.yaml, approval.auto_approve true, retention.min_age_days 0",
        "bytes_per_collected_version": _kind_figure(final, "collected"),
        "max_bytes_per_collected_version": _kind_figure(final, "collected", "max"),
        "bytes_per_serving_version": _kind_figure(final, "serving"),
        "bytes_per_previous_version": _kind_figure(final, "previous"),
        "bytes_per_kept_version": _kind_figure(final, "kept"),
        "bytes_per_refused_version": int(np.mean([r["by_kind"]["refused"]["mean"] for r in refused]))
        if refused and all("refused" in r["by_kind"] for r in refused)
        else None,
        "scratch_bytes_after": final["scratch_bytes"] if final else None,
        "scratch_left": final["scratch_left"] if final else None,
        "max_scratch_bytes_after_a_round": max((r["scratch_bytes"] for r in rounds), default=None),
        "home_bytes_after_rounds": final["home_bytes"] if final else None,
        "home_bytes_after_demo": demo["home_bytes"] if demo else None,
        "demo": demo,
        "growth_bytes_per_round_after_gc": int(growth) if growth is not None else None,
        "growth_bytes_per_round_first_half": (
            int(s) if (s := slope(residual[: len(residual) // 2])) is not None else None
        ),
        "max_growth_bytes_per_round_after_gc": max(steps) if steps else None,
        "growth_rounds": f"{len(residual) - min(half, len(residual)) + 1}-{len(residual)}",
        "gc_seconds": [r["gc_s"] for r in rounds],
        "gc_seconds_max": max((r["gc_s"] for r in rounds), default=None),
        "train_seconds": [r["train_s"] for r in rounds],
        "convert_seconds": [r.get("convert_s") for r in rounds],
        "loop_seconds": round(loop_seconds, 1),
        "rollback_after_gc": rollback,
        "versions": final["versions"] if final else [],
        "per_round": [
            {k: v for k, v in r.items() if k != "reasons"} | {"reasons": r["reasons"][:3]} for r in rounds
        ],
        "cpu": cpu_description(),
        "home": str(tmp) if args.keep else None,
    }


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def targets(f: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, figure, met / missed / not run) for issue 24's targets."""

    def verdict(ok: bool | None) -> str:
        return "not run" if ok is None else ("met" if ok else "missed")

    demo, collected = f["home_bytes_after_demo"], f["max_bytes_per_collected_version"]
    growth, top, scratch = (
        f["growth_bytes_per_round_after_gc"],
        f["max_growth_bytes_per_round_after_gc"],
        f["scratch_bytes_after"],
    )
    rollback = f["rollback_after_gc"] or {}
    shown = {k: rollback[k] for k in ("ok", "service_backend", "collected_refused", "error") if k in rollback}
    growth_text = (
        f"{_mb(growth)} MB/round (rounds {f['growth_rounds']}), "
        f"first half {_mb(f['growth_bytes_per_round_first_half'])}, largest step {_mb(top)}"
    )
    growth_ok = (
        None if growth is None else growth <= TARGET_GROWTH_BYTES and (top or 0) <= TARGET_GROWTH_BYTES
    )
    return [
        ("`make demo` home <= 500 MB", f"{_mb(demo)} MB", verdict(_at_most(demo, TARGET_DEMO_HOME_BYTES))),
        (
            "version outside retention <= 5 MB",
            f"{_mb(collected)} MB (largest)",
            verdict(_at_most(collected, TARGET_COLLECTED_BYTES)),
        ),
        ("no scratch after successful steps", f"{scratch} bytes", verdict(_at_most(scratch, 0))),
        ("growth per round after gc <= 10 MB, flat", growth_text, verdict(growth_ok)),
        (
            "rollback to previous after gc",
            json.dumps(shown),
            verdict(rollback.get("ok") if rollback else None),
        ),
    ]


def _at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


COLUMNS = (
    ("round", 5),
    ("v", 3),
    ("outcome", -22),
    ("train s", 7),
    ("conv s", 6),
    ("gc s", 5),
    ("freed", 7),
    ("home", 7),
    ("store", 7),
    ("scratch", 7),
    ("kept set", 8),
    ("residual", 8),
)


def _cells(values: list[Any]) -> str:
    return " ".join(
        f"{str(v):<{-w}}" if w < 0 else f"{str(v):>{w}}" for v, (_, w) in zip(values, COLUMNS, strict=True)
    )


def print_report(f: dict[str, Any]) -> None:
    quick = " (--quick)" if f["quick"] else ""
    print(f"storage benchmark: {f['rounds']} rounds, {f['model']}, {f['data']}{quick}")
    print(_cells([name for name, _ in COLUMNS]) + "  versions by kind (count x mean MB)")
    for r in f["per_round"]:
        kinds = ", ".join(f"{k} {v['count']}x{v['mean'] / MB:.1f}" for k, v in r["by_kind"].items())
        sizes = ("gc_freed_bytes", "home_bytes", "artifact_store_bytes", "scratch_bytes")
        row = [r["round"], r["version"], r["outcome"][:22], r["train_s"], r.get("convert_s", "-"), r["gc_s"]]
        row += [_mb(r[k]) for k in (*sizes, "retained_bytes", "residual_bytes")]
        print(_cells(row) + "  " + kinds)
    print("(MB = 10^6 bytes; store: the MLflow artifact root, inside the home; residual: total - kept set)")
    if f["demo"]:
        d = f["demo"]
        dry = " (dry run)" if d["gc_dry_run"] else ""
        print(
            f"demo home {d['home']}: {_mb(d['home_bytes'])} MB, "
            f"after gc{dry} {_mb(d['home_bytes_after_gc'])} MB"
        )
    for name, figure, verdict in targets(f):
        print(f"  {verdict:<8} {name}: {figure}")
    if f["home"]:
        print(f"  homes kept under {f['home']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from host import offline

    offline()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-storage-bench-"))
    try:
        figures = run(args, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print_report(figures)
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
