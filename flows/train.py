"""Flow `train`: one continual LoRA round on every snapshot the champion has not seen, gated and
registered in MLflow.

Retries are safe: a round is keyed by the content of its snapshots, the parent adapter's sha256, the
train config and the policy's gates; find, train and register run under a registry lock on that key,
training resumes from its checkpoints, and a second run returns the existing version instead of
making another. `project` names the project whose data and registered model the round uses.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from tuneloop.config import DEFAULT_PROJECT, load_settings
from tuneloop.steps.release import approve_step
from tuneloop.steps.round import train_step
from tuneloop.steps.round_data import NothingNewError


def _worth_retrying(_task: Any, _run: Any, state: Any) -> bool:
    """Retry a crash (a registry hiccup, a killed worker), not "nothing new to train on"."""
    return not isinstance(state.result(raise_on_failure=False), NothingNewError)


@task(name="train-round", retries=1, retry_delay_seconds=30, retry_condition_fn=_worth_retrying)
def train_round_task(snapshot_id: str | None, epochs: int | None, project: str) -> dict[str, Any]:
    settings = load_settings(project=project)
    return train_step(settings, snapshot_id=snapshot_id, progress=False, epochs=epochs)


@task(name="approve")
def approve_task(version: str, by: str, reject: bool, note: str, project: str) -> dict[str, Any]:
    return approve_step(load_settings(project=project), version, by=by, reject=reject, note=note)


@flow(name="train", log_prints=True)
def train_flow(
    snapshot_id: str | None = None, epochs: int | None = None, project: str = DEFAULT_PROJECT
) -> dict[str, Any]:
    """Train from the current champion on every snapshot it has not seen, up to `snapshot_id`
    (default: the newest). With no new snapshot the run ends quietly: a nightly schedule on a quiet
    day is not a failure."""
    try:
        result = train_round_task(snapshot_id, epochs, project)
    except NothingNewError as exc:
        get_run_logger().info(f"nothing to train: {exc}")
        return {"skipped": str(exc)}
    verdict = "passed" if result["gate"]["passed"] else "refused: " + "; ".join(result["gate"]["reasons"])
    get_run_logger().info(f"v{result['version']} macro-F1 {result['metrics']['macro_f1']}: gate {verdict}")
    return result


@flow(name="approve", log_prints=True)
def approve_flow(
    version: str, by: str, reject: bool = False, note: str = "", project: str = DEFAULT_PROJECT
) -> dict[str, Any]:
    """Record an approval decision (ops can run this from the Prefect UI as well as the MLflow UI)."""
    return approve_task(version, by, reject, note, project)


if __name__ == "__main__":
    train_flow()
