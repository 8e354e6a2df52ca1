"""Benchmark: `tuneloop demo` end to end in a fresh temporary home, timed from the outside.

Runs the installed `tuneloop demo --json` in a new process (so imports count, as they do for a user),
with a new TUNELOOP_HOME under a temporary folder, no TUNELOOP_* settings inherited (embedded
defaults: real MiniLM, SQLite MLflow, the demo policy) and the temporary folder as working directory
(so no tuneloop.yaml is picked up). Nothing is fetched: HF_HUB_OFFLINE=1.

    python benchmarks/demo.py            # the figure in benchmarks/README.md (minutes on 2 cores)
    python benchmarks/demo.py --quick    # smoke run: TUNELOOP_EPOCHS=1, not the README's figure
    python benchmarks/demo.py --keep     # keep the home afterwards and print where it is

The last line printed is one JSON object: seconds, versions, promoted, rolled_back, refused (with
reasons), champion_errors (failed requests and champion model-call errors during the canaries: 0),
and per drop what ingest kept and what its round's outcome was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def demo_env(home: Path, quick: bool) -> dict[str, str]:
    """This process's environment without TUNELOOP_* settings, offline, pointing at `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env.update(OFFLINE, TOKENIZERS_PARALLELISM="false", TUNELOOP_HOME=str(home))
    if quick:
        env["TUNELOOP_EPOCHS"] = "1"
    return env


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of `stdout` that is a JSON object (`--json` prints exactly one, last)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("`tuneloop demo --json` printed no JSON object; its output ends:\n" + stdout[-2000:])


def summarize(result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Figures from the demo's JSON: each version's outcome (promoted, rolled_back, refused) and why,
    what each drop's ingest kept, and the errors on the champion's path (0 expected)."""
    outcome_of: dict[str, list[Any]] = {"promoted": [], "rolled_back": [], "refused": []}
    by_drop: dict[str, dict[str, Any]] = {}
    for r in result["rounds"]:
        version = str(r["version"])
        by_drop[r["drop"]] = r
        if r["outcome"] == "promoted":
            outcome_of["promoted"].append(version)
        else:
            outcome_of.setdefault(r["outcome"], []).append(
                {"version": version, "reason": r.get("decision", "")}
            )
    drops = []
    for step in result.get("drops", []):
        ingest = step["ingest"]
        drop: dict[str, Any] = {
            "drop": step["drop"],
            "rows": ingest.get("rows"),
            "accepted": ingest.get("accepted"),
            "duplicates": ingest.get("duplicates"),
            "quarantined": ingest.get("quarantined"),
            "reasons": ingest.get("reasons", {}),
        }
        if step["drop"] in by_drop:
            r = by_drop[step["drop"]]
            drop.update(
                version=str(r["version"]), outcome=r["outcome"], macro_f1=r["metrics"].get("macro_f1")
            )
        drops.append(drop)
    return {
        "seconds": round(seconds, 1),
        "versions": [str(r["version"]) for r in result["rounds"]],
        **outcome_of,
        "champion_errors": result.get("champion_errors"),
        "drops": drops,
    }


def run_demo(tuneloop: Path, home: Path, quick: bool) -> tuple[dict[str, Any], float]:
    """(demo JSON, wall seconds) of one `tuneloop demo --json` run into `home`."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(tuneloop), "demo", "--json"],
        cwd=home.parent,
        env=demo_env(home, quick),
        stdout=subprocess.PIPE,
        text=True,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"`tuneloop demo` exited {done.returncode}; its output ends:\n{done.stdout[-2000:]}")
    return last_json(done.stdout), seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tuneloop",
        type=Path,
        default=Path(sys.executable).parent / "tuneloop",
        help="the tuneloop executable (default: beside this Python)",
    )
    parser.add_argument("--quick", action="store_true", help="TUNELOOP_EPOCHS=1: a smoke run, not the figure")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home and print where")
    args = parser.parse_args(argv)
    if not args.tuneloop.is_file():
        print(f"no tuneloop executable at {args.tuneloop}; pass --tuneloop", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="tuneloop-demo-bench-"))
    try:
        result, seconds = run_demo(args.tuneloop, tmp / "home", args.quick)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    figures = summarize(result, seconds) | {"quick": args.quick}
    print(f"demo benchmark: `tuneloop demo` in a fresh home{' (--quick: 1 epoch)' if args.quick else ''}")
    print(f"  seconds   {figures['seconds']}")
    for drop in figures["drops"]:
        print(f"  {drop['drop']:<8}  {json.dumps({k: v for k, v in drop.items() if k != 'drop'})}")
    rolled_back = [r["version"] for r in figures["rolled_back"]]
    refused = [r["version"] for r in figures["refused"]]
    print(f"  promoted  {figures['promoted']}  rolled back {rolled_back}  refused {refused}")
    print(f"  errors on the champion's path: {figures['champion_errors']}")
    if args.keep:
        print(f"  home kept at {tmp / 'home'}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
