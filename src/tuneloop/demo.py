"""`tuneloop demo`: the whole loop on the bundled data, on embedded defaults.

Writes the bundled support-intent data into the landing folder in three drops (base, drift-1,
drift-2) and runs each stage that exists over them, printing what it did. State stays in
TUNELOOP_HOME, so `tuneloop status` and the MLflow UI (`mlflow ui --backend-store-uri
sqlite:///.tuneloop/mlflow.db`) show the result afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

from tuneloop.config import Settings, mask_uri


def run_demo(settings: Settings, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    import os

    from tuneloop.config import PROJECT_ROOT
    from tuneloop.data.bundled import write_bundled
    from tuneloop.data.messy import write_messy
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.status import status

    if "TUNELOOP_POLICY_PATH" not in os.environ:
        # The demo policy is the default policy with auto-approval and a fast canary.
        settings = settings.model_copy(update={"policy_path": PROJECT_ROOT / "registry" / "policy.demo.yaml"})
    say = echo or (lambda _msg: None)
    landing = settings.landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    staging = settings.work_dir / "bundled"
    files = write_bundled(staging)
    rounds = []
    for name in ("base", "drift-1", "drift-2"):
        target = landing / files[name].name
        shutil.copy2(files[name], target)
        drop = [target]
        if name == "drift-1":
            # Two messy files (CSV and JSONL: no one format can hold every fault) with one row of
            # each quarantine reason, a duplicate and two good rows (tuneloop.data.messy).
            drop.extend(write_messy(landing))
        say(f"[bold]drop {name}[/]: {', '.join(str(p) for p in drop)}")
        result = ingest_step(settings, drop)
        say(f"  ingest: {result['message']}")
        step: dict[str, Any] = {"drop": name, "ingest": result}
        if result["snapshot"]:
            step.update(_train_and_release(settings, result["snapshot"], say))
        rounds.append(step)
    final = status(settings)
    say(f"snapshots: {[s['id'] for s in final['data']['snapshots']]}")
    say(f"aliases: {final['registry']['aliases']}")
    uri = mask_uri(settings.resolved_tracking_uri)
    say(f"next: `tuneloop status`, or `mlflow ui --backend-store-uri {uri}`")
    return {"rounds": rounds, "status": final}


def _train_and_release(settings: Settings, snapshot_id: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Train a round on the new snapshot; promote it when the gates pass and the policy approves."""
    from tuneloop.registry.policy import load_policy
    from tuneloop.registry.store import Registry
    from tuneloop.steps.release import promote_step, promotion_problems
    from tuneloop.steps.round import train_step

    trained = train_step(settings, snapshot_id=snapshot_id, progress=True)
    verdict = "passed" if trained["gate"]["passed"] else "refused: " + "; ".join(trained["gate"]["reasons"])
    say(
        f"  train: v{trained['version']} macro-F1 {trained['metrics']['macro_f1']:.3f} "
        f"(golden {trained['metrics'].get('golden', {}).get('macro_f1', float('nan')):.3f}); gate {verdict}"
    )
    step: dict[str, Any] = {"train": trained}
    info = Registry(settings).get_version(trained["version"])
    if info.gate_passed:
        from tuneloop.steps.convert import convert_step

        converted = convert_step(settings, info.version)
        sets = converted["parity"]["sets"]
        agreement = min(s["int8_argmax_agreement"] or 0.0 for s in sets.values())
        say(
            f"  convert: parity {'passed' if converted['parity']['passed'] else 'FAILED'} "
            f"(INT8 argmax agreement {agreement:.4f}; "
            f"TensorRT {converted['tensorrt'].get('skipped') or 'built'})"
        )
        step["convert"] = converted
        info = Registry(settings).get_version(info.version)
    problems = promotion_problems(info, load_policy(settings.policy_path))
    if problems:
        say("  promote: not promoted: " + "; ".join(problems))
    else:
        promoted = promote_step(
            settings, info.version, reason=f"demo: {snapshot_id} passed the gates", by="demo"
        )
        say(f"  promote: champion v{promoted['champion']} (previous v{promoted['previous'] or '-'})")
        step["promote"] = promoted
    return step
