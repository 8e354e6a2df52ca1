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

from tuneloop.config import Settings


def run_demo(settings: Settings, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    import os

    from tuneloop.config import PROJECT_ROOT
    from tuneloop.data.bundled import write_bundled
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
        say(f"[bold]drop {name}[/]: {target}")
        result = ingest_step(settings, [target])
        say(f"  ingest: {result['message']}")
        rounds.append({"drop": name, "ingest": result})
    final = status(settings)
    say(f"snapshots: {[s['id'] for s in final['data']['snapshots']]}")
    return {"rounds": rounds, "status": final}
