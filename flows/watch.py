"""Flow `watch`: read the service's metrics and say so when the champion sees drift.

Runs on a schedule (every 10 minutes, flows/deploy.py). It decides with the same pure function the
`continual` flow uses (steps/triggers.py), so cooldown and daily cap hold here too, and emits
`tuneloop.drift.detected` only for a drift reason (low mean confidence, label mix moved); new rows
are the `tuneloop.data.landed` event's business. One run judges one project (`project`): its
champion's series only (the service labels every series with its project), and the event carries the
project so only that project's `continual` deployment answers it. The deployment trigger on that event runs
`continual` with `trigger=drift`, which decides again (the numbers may have moved meanwhile).

It reads the replicas the rollout reads (steps/metrics.replica_source): every address of
TUNELOOP_ROLLOUT_REPLICAS_URL (the headless Service) when set, else each URL `service_url`
(TUNELOOP_SERVICE_URL) lists, comma-separated; drift is judged on their sum, and not at all when
one of them cannot be read.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from flows.continual import SERVICE_URL
from flows.events import DRIFT_DETECTED, PROJECT_LABEL
from tuneloop.config import DEFAULT_PROJECT, load_settings
from tuneloop.steps.trigger_signals import decide_step


@task(name="read-drift", retries=2, retry_delay_seconds=10)
def read_drift_task(service_url: str, project: str) -> dict[str, Any]:
    return decide_step(load_settings(project=project), "drift", service_url)


@flow(name="watch", log_prints=True)
def watch_flow(service_url: str = SERVICE_URL, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """Judge drift on `project`'s serving champion; emit `tuneloop.drift.detected` if a round should start."""
    decision = read_drift_task(service_url, project)
    drift = [r for r in decision["reasons"] if r.startswith("drift:")]
    get_run_logger().info(f"watch: {decision['reasons']}")
    if decision["start"] and drift:
        emit_event(
            event=DRIFT_DETECTED,
            resource={
                "prefect.resource.id": "tuneloop.service",
                "tuneloop.service_url": service_url,
                PROJECT_LABEL: project,
            },
            payload={"project": project, "reasons": drift, "signals": decision["signals"]},
        )
    return {**decision, "emitted": bool(decision["start"] and drift)}


if __name__ == "__main__":
    watch_flow()
