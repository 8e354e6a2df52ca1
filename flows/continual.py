"""Flow `continual`: decide -> ingest -> train -> approval -> compress -> convert -> roll out, one round.

Every task calls a step from `tuneloop.steps` (the same ones `tuneloop retrain` runs in process, see
steps/continual.py for what `snapshot`, `dry_run` and `skip_approval` mean). Retries only where a
failure is transient: a registry or store hiccup, a killed worker. A gate refusal is a result, not an
error, and "nothing new to train on" is not retried (the second try would learn the same thing).

Resuming: run it again. No Prefect result cache is needed, because every step is idempotent by key
(ingest by file hash, train by round key, convert by conversion key, promotion by its recorded
intent, the rollout by its registry state): a re-run finds what is done and skips it.

`trigger` says what started the run: `manual` always starts; `schedule`, `data` and `drift` go through
`decide_round` (policy `triggers`: enough new rows or drift, cooldown, daily cap). When no round
starts, a version approved since an earlier run stopped waiting is still released.

`project` names the project the round is for: every task reads that project's settings (its data
folder, registered model, policy, triggers), so cooldown and daily cap count its own rounds only,
and the rollout judges its own series. Each project has its own deployment (flows/deploy.py).
"""

from __future__ import annotations

import os
from typing import Any

from prefect import flow, get_run_logger, task

from tuneloop.config import DEFAULT_PROJECT, load_settings
from tuneloop.steps import continual as steps
from tuneloop.steps.compress import compress_for_release
from tuneloop.steps.convert import convert_step
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.metrics import DEFAULT_SERVICE_URL
from tuneloop.steps.round import train_step
from tuneloop.steps.round_data import NothingNewError
from tuneloop.steps.trigger_signals import decide_step

# Where the watch and the drift check read /metrics; `tuneloop serve` listens on 127.0.0.1:3000.
SERVICE_URL = os.environ.get("TUNELOOP_SERVICE_URL", DEFAULT_SERVICE_URL)


def _worth_retrying(_task: Any, _run: Any, state: Any) -> bool:
    """Retry a crash (a registry hiccup, a killed worker), not "nothing new to train on"."""
    return not isinstance(state.result(raise_on_failure=False), NothingNewError)


@task(name="decide-round", retries=2, retry_delay_seconds=10)
def decide_task(trigger: str, service_url: str | None, project: str) -> dict[str, Any]:
    return decide_step(load_settings(project=project), trigger, service_url)


@task(name="ingest-landing", retries=2, retry_delay_seconds=10)
def ingest_task(project: str) -> dict[str, Any]:
    return ingest_step(load_settings(project=project), [])


@task(name="train-round", retries=1, retry_delay_seconds=30, retry_condition_fn=_worth_retrying)
def train_task(snapshot: str | None, dry_run: bool, epochs: int | None, project: str) -> dict[str, Any]:
    settings = load_settings(project=project)
    policy = steps.round_policy(settings, dry_run)
    return train_step(settings, snapshot_id=snapshot, progress=False, policy=policy, epochs=epochs)


@task(name="wait-for-approval", retries=2, retry_delay_seconds=10)
def approval_task(version: str, wait_s: float, poll_s: float, project: str) -> dict[str, Any]:
    return steps.wait_for_approval(load_settings(project=project), version, wait_s, poll_s)


@task(name="approved-candidate", retries=2, retry_delay_seconds=10)
def candidate_task(project: str) -> str | None:
    return steps.approved_candidate(load_settings(project=project))


# Distils the version's students when policy `compress.enabled` says so (None otherwise); a retry
# finds them recorded and skips, so a crash after recording costs no second distillation.
@task(name="compress-version", retries=1, retry_delay_seconds=30)
def compress_task(version: str, project: str) -> dict[str, Any] | None:
    return compress_for_release(load_settings(project=project), version)


@task(name="convert-version", retries=1, retry_delay_seconds=30)
def convert_task(version: str, project: str) -> dict[str, Any]:
    return convert_step(load_settings(project=project), version)


# The controller keeps its state in the registry and a restarted one finishes or rolls back, so a
# retry after a crash resumes the same rollout; a refusal (not approved, another rollout running)
# is refused again at once.
@task(name="roll-out", retries=1, retry_delay_seconds=30)
def rollout_task(version: str, service_url: str | None, project: str) -> dict[str, Any]:
    return steps.roll_out(load_settings(project=project), version, service_url, get_run_logger().info)


def _release(version: str, out: dict[str, Any], service_url: str | None, project: str) -> dict[str, Any]:
    log = get_run_logger()
    if (compressed := compress_task(version, project)) is not None:
        out["compress"] = compressed
        log.info(f"v{version} students passed: {compressed.get('passed', compressed.get('skipped'))}")
    out["convert"] = convert_task(version, project)
    if not out["convert"]["parity"]["passed"]:
        log.info(f"v{version} failed conversion parity: {out['convert']['parity']['reasons']}")
        return {**out, "version": version, "outcome": "conversion_failed"}
    out["rollout"] = rollout_task(version, service_url, project)
    log.info(f"v{version} rollout: {out['rollout']['outcome']}")
    return {**out, "version": version, "outcome": out["rollout"]["outcome"]}


@flow(name="continual", log_prints=True)
def continual_flow(
    trigger: str = "manual",
    snapshot: str | None = None,
    dry_run: bool = False,
    skip_approval: bool = False,
    approval_wait_s: float = steps.APPROVAL_WAIT_S,
    approval_poll_s: float = steps.APPROVAL_POLL_S,
    epochs: int | None = None,
    service_url: str | None = SERVICE_URL,
    project: str = DEFAULT_PROJECT,
) -> dict[str, Any]:
    """One round of the loop; returns each stage's result and `outcome` (started: false, nothing_new,
    refused, dry_run, awaiting_approval, conversion_failed, or the rollout's: promoted,
    rolled_back, aborted, already_champion)."""
    log = get_run_logger()
    settings = load_settings(project=project)
    steps.check_run_options(steps.round_policy(settings), dry_run, skip_approval)
    out: dict[str, Any] = {"trigger": trigger, "dry_run": dry_run, "project": project}
    out["decision"] = decide_task(trigger, service_url, project)
    log.info(
        f"{trigger}: {'start' if out['decision']['start'] else 'no round'}: {out['decision']['reasons']}"
    )
    if not out["decision"]["start"]:
        pending = None if dry_run else candidate_task(project)
        if pending is None:
            return {**out, "outcome": "not_started"}
        return _release(pending, out, service_url, project)
    if snapshot is None and not dry_run:
        out["ingest"] = ingest_task(project)
        log.info(out["ingest"]["message"])
    try:
        trained = train_task(snapshot, dry_run, epochs, project)
    except NothingNewError as exc:
        log.info(f"nothing to train: {exc}")
        pending = None if dry_run else candidate_task(project)
        if pending is None:
            return {**out, "outcome": "nothing_new", "reason": str(exc)}
        return _release(pending, out, service_url, project)
    out["train"], version = trained, trained["version"]
    if not trained["gate"]["passed"]:
        log.info(f"v{version} refused by the gates: {trained['gate']['reasons']}")
        return {**out, "version": version, "outcome": "refused"}
    if dry_run:
        return {**out, "version": version, "outcome": "dry_run"}
    wait_s = 0.0 if skip_approval else approval_wait_s
    out["approval"] = approval_task(version, wait_s, approval_poll_s, project)
    if not out["approval"]["approved"]:
        log.info(f"v{version} not approved: {out['approval']['reasons']}")
        return {**out, "version": version, "outcome": "awaiting_approval"}
    return _release(version, out, service_url, project)


if __name__ == "__main__":
    continual_flow()
