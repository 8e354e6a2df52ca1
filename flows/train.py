"""Flow `train`: one continual LoRA round on every snapshot the champion has not seen, gated and
registered in MLflow.

Retries are safe: a round is keyed by the content of its snapshots, the parent adapter's sha256, the
train config and the policy's gates; find, train and register run under a registry lock on that key,
training resumes from its checkpoints, and a second run returns the existing version instead of
making another.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from tuneloop.config import load_settings
from tuneloop.steps.round import approve_step, train_step


@task(name="train-round", retries=1, retry_delay_seconds=30)
def train_round_task(snapshot_id: str | None, epochs: int | None) -> dict[str, Any]:
    return train_step(load_settings(), snapshot_id=snapshot_id, progress=False, epochs=epochs)


@task(name="approve")
def approve_task(version: str, by: str, reject: bool, note: str) -> dict[str, Any]:
    return approve_step(load_settings(), version, by=by, reject=reject, note=note)


@flow(name="train", log_prints=True)
def train_flow(snapshot_id: str | None = None, epochs: int | None = None) -> dict[str, Any]:
    """Train from the current champion on every snapshot it has not seen, up to `snapshot_id`
    (default: the newest)."""
    result = train_round_task(snapshot_id, epochs)
    verdict = "passed" if result["gate"]["passed"] else "refused: " + "; ".join(result["gate"]["reasons"])
    get_run_logger().info(f"v{result['version']} macro-F1 {result['metrics']['macro_f1']}: gate {verdict}")
    return result


@flow(name="approve", log_prints=True)
def approve_flow(version: str, by: str, reject: bool = False, note: str = "") -> dict[str, Any]:
    """Record an approval decision (ops can run this from the Prefect UI as well as the MLflow UI)."""
    return approve_task(version, by, reject, note)


if __name__ == "__main__":
    train_flow()
