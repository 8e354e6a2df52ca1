"""Flow `gc`: retention as policy, daily (flows/deploy.py, 04:00 UTC), the same step as `tuneloop gc`.

Collects the rebuildable bulk (merged model, ONNX graphs) of versions outside the policy's
`retention` section and caps the quarantine's whole-file copies; every collected version is tagged
`gc_collected` first, so a run killed anywhere is finished by the next one. 04:00 is after the
nightly round (02:00) and the Sunday scan (03:00). It only lists and deletes: a small job.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from tuneloop.config import DEFAULT_PROJECT, load_settings
from tuneloop.steps.gc import gc_step

# Recorded as `by` on each collected version: the schedule, not whoever the pod runs as.
FLOW_USER = "flow:gc"


@task(name="collect", retries=1, retry_delay_seconds=60)
def gc_task(dry_run: bool, by: str, project: str) -> dict[str, Any]:
    return gc_step(load_settings(project=project), dry_run=dry_run, by=by)


@flow(name="gc", log_prints=True)
def gc_flow(dry_run: bool = False, by: str = FLOW_USER, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """Collect `project`'s old versions' bulk and cap its quarantine copies under its policy's `retention`."""
    result = gc_task(dry_run, by, project)
    get_run_logger().info(f"gc: {result['message']}")
    return result


if __name__ == "__main__":
    gc_flow()
