"""Step: one continual round, ingest -> train -> approval -> convert -> roll out, without Prefect.

`tuneloop retrain` runs `continual_step` in process; the Prefect flow `continual` (flows/continual.py)
wires the same pieces as tasks with retries. A run that died part-way is resumed by running it again:
every piece is idempotent by key, so it skips what is done instead of redoing it:

- ingest knows files by content hash (a second ingest of the same files cuts no snapshot);
- train finds the version registered for the round's key (snapshots, parent adapter, config, gates);
- convert returns the recorded result for the same conversion key;
- promotion completes a recorded intent; the rollout controller resumes from its registry state,
  and a rollout recorded by a controller that died is finished before a new one starts (the canary
  it left serving is judged by nobody until then).

Parameters an operator sets:
- `snapshot`: train up to this existing snapshot; the landing folder is then not ingested.
- `dry_run`: no ingest, and the round is trained, evaluated and registered as `tuneloop train` does
  (the version is the record of the evaluation, and a later real run of the same round reuses it
  instead of training again), but never approved, even by an auto-approving policy, and never
  converted, promoted or rolled out: no alias other than `challenger` moves and no traffic changes.
- `skip_approval`: do not wait for approval. Allowed only where the policy needs no person
  (`approval.required: false`, or `auto_approve: true`); refused before any work otherwise. It never
  makes an unapproved version servable: the rollout checks approval again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tuneloop.config import Settings
from tuneloop.registry.policy import Policy, load_policy
from tuneloop.registry.store import Registry
from tuneloop.steps.metrics import metrics_source
from tuneloop.steps.release import approval_problems, promote_step

# Defaults for the bounded approval wait. A person looks at a candidate within hours, not seconds,
# but a waiting run holds a worker (and a Prefect pause would release the deployment's concurrency
# slot, so we poll instead). 15 min = 900 s polled every 30 s is 30 registry reads; when it runs out
# the run ends as `awaiting approval` and the next run (schedule, trigger or `tuneloop retrain`)
# picks the approval up: its train step reuses the registered version, so nothing is retrained.
APPROVAL_WAIT_S = 900.0
APPROVAL_POLL_S = 30.0
# A controller that died holds the `rollout` lock until its lease (30 s, rollout_step's default)
# runs out; waiting twice that lets the next run take the rollout over instead of being refused.
RESUME_WAIT_S = 60.0


class ApprovalSkipRefused(ValueError):
    """`skip_approval` asked for under a policy that requires a person's approval."""


def check_run_options(policy: Policy, dry_run: bool, skip_approval: bool) -> None:
    """Refuse option combinations before any work is done (pure)."""
    if skip_approval and policy.approval.required and not policy.approval.auto_approve:
        raise ApprovalSkipRefused(
            "skip_approval refused: the policy requires a person's approval (approval.required: true, "
            "auto_approve: false); approve with `tuneloop approve VERSION --by NAME` or in the MLflow UI"
        )
    if dry_run and skip_approval:
        raise ValueError("dry_run never reaches approval, so skip_approval means nothing with it")


def dry_run_policy(policy: Policy) -> Policy:
    """The policy a dry run trains under: the same gates (so the same round key), no auto-approval."""
    return policy.model_copy(update={"approval": policy.approval.model_copy(update={"auto_approve": False})})


def round_policy(settings: Settings, dry_run: bool = False) -> Policy:
    """The policy a round trains under: the configured one, without auto-approval for a dry run."""
    policy = load_policy(settings.policy_path)
    return dry_run_policy(policy) if dry_run else policy


def wait_for_approval(
    settings: Settings,
    version: str,
    timeout_s: float = APPROVAL_WAIT_S,
    poll_s: float = APPROVAL_POLL_S,
    registry: Registry | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Poll the version's approval tags until they count under the policy, it is rejected, or time is up."""
    policy = load_policy(settings.policy_path)
    registry = registry or Registry(settings)
    deadline = clock() + timeout_s
    while True:
        info = registry.get_version(version)
        problems = approval_problems(info, policy)
        if not problems:
            return {"version": info.version, "approved": True, "by": info.tags.get("approval_by", "")}
        if info.approval == "rejected" or clock() >= deadline:
            return {"version": info.version, "approved": False, "reasons": problems}
        sleep(max(0.0, min(poll_s, deadline - clock())))


def approved_candidate(settings: Settings, registry: Registry | None = None) -> str | None:
    """The newest version a run left waiting and a person has since approved, if any.

    Newer than the champion, passed the gates, conversion not failed, never promoted or rolled back,
    and approved under the policy. A run whose approval wait ran out leaves such a version; the next
    run rolls it out even when the triggers start no new round (the cooldown holds back training,
    not the release of work already judged and approved). With no such version, a rollout recorded
    in the registry (its controller died) is the candidate: releasing it finishes that rollout.
    """
    from tuneloop.steps.rollout_state import read_state

    policy = load_policy(settings.policy_path)
    registry = registry or Registry(settings)
    in_flight = read_state(registry)
    champion = registry.alias("champion")
    floor = int(champion.version) if champion else 0
    for info in sorted(registry.versions(), key=lambda i: int(i.version), reverse=True):
        if int(info.version) <= floor:
            break
        done = {"promoted_at", "rolled_back"} & set(info.tags)
        if not info.gate_passed or done or info.tags.get("conversion") == "failed":
            continue
        if not approval_problems(info, policy):
            return info.version
    return in_flight.version if in_flight else None


def promote_first_champion(settings: Settings, version: str) -> dict[str, Any]:
    """The first version has no champion to run a canary against: it is promoted directly."""
    result = promote_step(settings, version, reason="first champion: gates, approval and conversion passed")
    return {**result, "outcome": "promoted", "rollout": "first champion: no canary (nothing to compare with)"}


def roll_out(
    settings: Settings, version: str, service_url: str | None = None, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Canary `version` through the policy's steps against the serving champion (steps/rollout.py),
    judging the service's `/metrics` at `service_url`; the first version is promoted directly.

    A rollout of another version recorded in the registry (its controller died) is finished first:
    resumed to its promotion, rollback or step deadline. Then `version` rolls out against whatever
    is champion by then.
    """
    from tuneloop.steps.rollout import rollout_step
    from tuneloop.steps.rollout_state import read_model

    registry = Registry(settings)
    say = log or (lambda _msg: None)
    source = metrics_source(service_url, settings.project)  # this project's series only
    view = read_model(registry)
    earlier: dict[str, Any] | None = None
    recorded = view.rollback["version"] if view.rollback else view.state.version if view.state else None
    if recorded is not None and recorded != version:
        say(f"v{recorded}: a rollout recorded by a controller that stopped; finishing it before v{version}")
        earlier = rollout_step(
            settings, recorded, source, by="tuneloop:continual", echo=log, wait_s=RESUME_WAIT_S
        )
    if registry.alias("champion") is None:
        return promote_first_champion(settings, version)
    result = rollout_step(settings, version, source, by="tuneloop:continual", echo=log, wait_s=RESUME_WAIT_S)
    return result if earlier is None else {**result, "finished_first": earlier}


def continual_step(
    settings: Settings,
    snapshot: str | None = None,
    dry_run: bool = False,
    skip_approval: bool = False,
    approval_wait_s: float = APPROVAL_WAIT_S,
    service_url: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    **train_overrides: Any,
) -> dict[str, Any]:
    """Run the whole round in this process; returns what happened at each stage and how it ended."""
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step
    from tuneloop.steps.round_data import NothingNewError

    policy = load_policy(settings.policy_path)
    check_run_options(policy, dry_run, skip_approval)
    out: dict[str, Any] = {"dry_run": dry_run}
    if snapshot is None and not dry_run:
        out["ingest"] = ingest_step(settings, [])
        log(out["ingest"]["message"])
    try:
        round_ = train_step(
            settings,
            snapshot_id=snapshot,
            progress=False,
            policy=dry_run_policy(policy) if dry_run else policy,
            **train_overrides,
        )
    except NothingNewError as exc:
        pending = None if dry_run else approved_candidate(settings)
        if pending is None:
            return {**out, "outcome": "nothing_new", "reason": str(exc)}
        log(f"nothing new to train; v{pending} was approved meanwhile: releasing it")
        return {**out, **release_step(settings, pending, service_url, log)}
    out["train"] = round_
    version = round_["version"]
    log(f"v{version}: gate {'passed' if round_['gate']['passed'] else 'refused'}")
    if not round_["gate"]["passed"]:
        return {
            **out,
            "version": version,
            "outcome": "refused",
            "reason": "; ".join(round_["gate"]["reasons"]),
        }
    if dry_run:
        return {**out, "version": version, "outcome": "dry_run"}
    out["approval"] = wait_for_approval(settings, version, 0.0 if skip_approval else approval_wait_s)
    if not out["approval"]["approved"]:
        return {**out, "version": version, "outcome": "awaiting_approval"}
    return {**out, **release_step(settings, version, service_url, log)}


def release_step(
    settings: Settings,
    version: str,
    service_url: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Compress (policy `compress.enabled`), convert (parity gated, the fastest of teacher and
    students published) and roll out an approved version."""
    from tuneloop.steps.compress import compress_for_release
    from tuneloop.steps.convert import convert_step

    out: dict[str, Any] = {"version": version}
    if (compressed := compress_for_release(settings, version)) is not None:
        out["compress"] = compressed
    out["convert"] = convert_step(settings, version)
    if not out["convert"]["parity"]["passed"]:
        return {**out, "outcome": "conversion_failed"}
    return {
        **out,
        "rollout": (rolled := roll_out(settings, version, service_url, log)),
        "outcome": rolled["outcome"],
    }
