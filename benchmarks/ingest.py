"""Benchmark: ingest BANKING77 train (10,003 rows) end to end into a fresh TUNELOOP home.

End to end means what `tuneloop ingest` does before MLflow: read the CSV, validate every row,
de-duplicate against the batch and history, split per label, write three Parquet files and the
manifest, rename the snapshot into place, write the ledger. Each repeat uses a new home, so nothing
is skipped; one untimed warm-up run first pays the one-off imports (pyarrow.parquet). Also timed:
reading + validation alone, re-ingesting the same file (recognised by hash, skipped), and, where the
registry adapter exists, logging the snapshot to MLflow on SQLite (cold: creates the database).

    python benchmarks/ingest.py [--data ../shared/data/banking77] [--repeats 5] [--no-mlflow]

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def time_ingest(train: Path, label_column: str) -> dict:
    from tuneloop.data.ingest import IngestConfig, ingest
    from tuneloop.data.snapshot import load_manifest

    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-") as tmp:
        cfg = IngestConfig(home=Path(tmp) / "home", label_column=label_column)
        start = time.perf_counter()
        summary = ingest([train], cfg)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        again = ingest([train], cfg)
        reingest = time.perf_counter() - start
        labels = len(load_manifest(cfg.snapshots_dir, summary.snapshot).labels)
    assert again.skipped_files == [str(train)] and again.accepted == 0
    return {"seconds": seconds, "reingest_seconds": reingest, "summary": summary, "labels": labels}


def time_read_validate(train: Path, label_column: str) -> float:
    from tuneloop.data.ingest import IngestConfig
    from tuneloop.data.readers import read_file
    from tuneloop.data.validate import Rules, check_record

    defaults = IngestConfig(home=Path())  # the same rules ingest applies by default
    rules = Rules(defaults.max_text_chars, defaults.label_pattern)
    label_re = rules.compiled()
    start = time.perf_counter()
    read = read_file(train, "text", label_column)
    for record in read.records:
        check_record(record, rules, label_re)
    return time.perf_counter() - start


def time_mlflow(train: Path, label_column: str, warm_repeats: int = 3) -> dict | None:
    """Seconds for `Registry.log_snapshot` (cold: a fresh SQLite store; warm: the same store again)."""
    try:
        from tuneloop.registry.store import Registry
    except ImportError:
        return None
    if not hasattr(Registry, "log_snapshot"):
        return None
    import mlflow  # noqa: F401  (imported first: it sets its own log level on import)

    from tuneloop.config import Settings
    from tuneloop.data.ingest import ingest
    from tuneloop.steps.ingest import ingest_config

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # quiet its database set-up notes
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-mlflow-") as tmp:
        settings = Settings(home=Path(tmp) / "home", label_column=label_column)
        summary = ingest([train], ingest_config(settings)).model_dump(mode="json")
        folder = settings.snapshots_dir / summary["snapshot"]
        times = []
        for _ in range(1 + warm_repeats):
            start = time.perf_counter()
            Registry(settings).log_snapshot(summary, folder, None)
            times.append(time.perf_counter() - start)
    return {"cold": times[0], "warm": statistics.median(times[1:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO_ROOT.parent / "shared" / "data" / "banking77",
        help="folder holding BANKING77's train.csv",
    )
    parser.add_argument("--label-column", default="category", help="BANKING77 calls its label column so")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, each into a fresh home")
    parser.add_argument("--no-mlflow", action="store_true", help="skip timing the MLflow logging")
    args = parser.parse_args(argv)

    train = args.data / "train.csv"
    if not train.is_file():
        print(f"no {train}: pass --data with the folder holding BANKING77's train.csv", file=sys.stderr)
        return 2

    time_ingest(train, args.label_column)  # warm-up, untimed
    runs = [time_ingest(train, args.label_column) for _ in range(args.repeats)]
    read_validate = statistics.median(
        time_read_validate(train, args.label_column) for _ in range(args.repeats)
    )
    summary = runs[0]["summary"]
    seconds = [r["seconds"] for r in runs]
    p50 = statistics.median(seconds)
    mlflow = None if args.no_mlflow else time_mlflow(train, args.label_column)

    figures = {
        "rows": summary.rows,
        "accepted": summary.accepted,
        "duplicates": summary.duplicates,
        "quarantined": summary.quarantined,
        "labels": runs[0]["labels"],
        "split": summary.split,
        "repeats": args.repeats,
        "seconds_p50": round(p50, 4),
        "seconds_min": round(min(seconds), 4),
        "seconds_max": round(max(seconds), 4),
        "rows_per_second": round(summary.rows / p50),
        "read_validate_seconds_p50": round(read_validate, 4),
        "reingest_skip_seconds_p50": round(statistics.median(r["reingest_seconds"] for r in runs), 4),
        "mlflow_log_seconds_cold": round(mlflow["cold"], 3) if mlflow else None,
        "mlflow_log_seconds_warm": round(mlflow["warm"], 3) if mlflow else None,
    }
    width = max(len(k) for k in figures)
    print(f"ingest benchmark: {train} ({args.repeats} runs, fresh home each)")
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
