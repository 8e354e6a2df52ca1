"""Step: the canary rollout controller (`tuneloop rollout VERSION`).

Composes the pure decision (tuneloop.rollout.analysis.judge_step), a metrics source
(tuneloop.rollout.sources) and the registry. Like Flagger's scheduler it reconciles once per tick:
read the traffic since the step began, judge it, then hold, advance, promote or roll back.

- Single flight: the whole rollout holds the lease lock `rollout` (Registry.lock), so a second
  rollout is refused at once, naming the holder; the lease (default 30 s, renewed every 10 s) frees
  the lock within 30 s of a controller dying. Every tick first checks that this controller still
  holds it (`Lease`): a lease whose renewals keep failing, or that another controller broke, stops
  this one before it acts again, within a tick rather than at the end.
- Crash-safe: where it stands lives in the registry (rollout_state.py). Started again after a
  crash, the controller resumes the same version at the recorded step, which begins a fresh window
  (the counters read before the crash are gone with the process): at most one window is repeated.
  A withdrawal and a promotion each record their intent before their first write, and whoever
  comes next (this controller again, `tuneloop rollback`, `tuneloop promote`) finishes it.
- Every step ends: a step still holding at the policy's `step_deadline_seconds` (too little
  traffic, a missing series, unreadable metrics) ends the rollout, and so does a recorded rollout
  whose `canary` alias is gone. Ending is a withdrawal: weight 0, alias cleared, tagged with why.
- Withdrawing sets the canary weight to 0 before anything else (Argo Rollouts' abort order), then
  clears the alias and tags the version `rolled_back` with the reason and the figures.
- Promotion goes through release.promote_rollout: under the `aliases` lock it re-reads the rollout
  (a `tuneloop rollback` that landed after the last judgement wins), records its intent, sets the
  weight to 0, and only then moves `previous` and `champion`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from tuneloop.config import Settings
from tuneloop.registry.policy import Policy, load_policy
from tuneloop.registry.store import Registry, RegistryError, current_user, is_not_found, now_iso
from tuneloop.rollout.analysis import QUALITY, Verdict, judge_step
from tuneloop.rollout.sources import MetricsError, MetricsSource
from tuneloop.steps.release import promote_rollout, promotion_problems
from tuneloop.steps.rollout_state import (
    EXPERIMENT,
    PENDING_TAG,
    RolloutState,
    finish_run,
    finish_withdrawal,
    read_model,
    read_state,
    set_weight,
    withdraw_canary,
    write_state,
)

Echo = Callable[[str], None]
LOCK = "rollout"


class LeaseLost(RegistryError):
    """This controller no longer holds the `rollout` lock: it stopped without acting again."""


class Lease:
    """Whether this controller still holds the `rollout` lock, read from the lock's registered model."""

    def __init__(self, registry: Registry, holder: str) -> None:
        self.registry, self.holder = registry, holder
        self.confirmed_until = 0.0  # the expiry last read back with our holder on it

    def check(self) -> None:
        """Raise LeaseLost unless the lock still names this holder with a lease that has not run out."""
        from mlflow.exceptions import MlflowException

        from tuneloop.registry.lock import lock_model_name

        name = lock_model_name(self.registry.model_name, LOCK)
        try:
            tags = dict(self.registry.client.get_registered_model(name).tags or {})
        except MlflowException as exc:
            if not is_not_found(exc) and time.time() < self.confirmed_until:
                return  # a registry hiccup, and the lease read back last time still runs
            raise LeaseLost(f"stopped: the rollout lock {name!r} could not be confirmed ({exc})") from exc
        if tags.get("holder") != self.holder:
            raise LeaseLost(
                f"stopped: the rollout lock {name!r} is now held by {tags.get('holder')} (this controller's "
                "lease ran out); the rollout stays recorded for whoever holds the lock"
            )
        expires = float(tags.get("expires_at") or 0)
        if expires <= time.time():
            raise LeaseLost(
                f"stopped: the lease on {name!r} expired {time.time() - expires:.0f} s ago (renewals "
                "failed); another controller may break it and resume the rollout"
            )
        self.confirmed_until = expires


def default_tick(policy: Policy) -> float:
    """A tenth of a step, between 1 and 30 s: a 300 s step is judged every 30 s (10 looks)."""
    return min(max(policy.canary.step_interval_seconds / 10.0, 1.0), 30.0)


def canary_steps(settings: Settings) -> list[float]:
    """The policy's canary steps (percent of traffic), in order."""
    return list(load_policy(settings.policy_path).canary.steps)


def rollout_step(
    settings: Settings,
    version: str,
    source: MetricsSource,
    *,
    by: str | None = None,
    wait_s: float = 0.0,
    lease_s: float = 30.0,
    tick_s: float | None = None,
    echo: Echo | None = None,
    registry: Registry | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Roll `version` out step by step and promote it, or roll it back; resumes an interrupted one.

    `wait_s`: how long to wait for another controller's lease (0 = refuse at once, naming it).
    """
    say = echo or (lambda _: None)
    policy = load_policy(settings.policy_path)
    registry = registry or Registry(settings)
    by = by or current_user()
    tick = tick_s if tick_s is not None else default_tick(policy)
    info = registry.get_version(version)
    problems = promotion_problems(info, policy)
    view = read_model(registry)
    recorded = {view.state.version if view.state else None, (view.rollback or {}).get("version")}
    if problems and info.version not in recorded:  # a recorded one is resumed, to roll it back
        raise RegistryError(f"v{info.version} cannot roll out: " + "; ".join(problems))
    with registry.lock(LOCK, timeout_s=wait_s, lease_s=lease_s) as holder:
        lease = Lease(registry, holder)
        view = read_model(registry)  # again, under the lock: the previous holder may have finished
        if view.rollback is not None:  # a withdrawal cut short: finish it before anything else
            interrupted = view.rollback
            with registry.lock("aliases"):
                pending = read_model(registry).rollback
                if pending is not None:
                    finish_withdrawal(registry, pending)
            say(f"v{interrupted['version']}: finished an interrupted withdrawal ({interrupted['reason']})")
            if interrupted["version"] == info.version:
                return _rolled_back(interrupted["version"], interrupted["reason"], {}, view.state)
            view = read_model(registry)
        state = view.state
        if state is not None and state.version != info.version:
            raise RegistryError(
                f"an interrupted rollout of v{state.version} is recorded in the registry; finish it "
                f"(`tuneloop rollout {state.version}`) or withdraw it (`tuneloop rollback --reason ...`)"
            )
        if state is None:
            champion = view.aliases.get("champion")
            if champion is None:
                raise RegistryError("no champion to compare with: make the first one with `tuneloop promote`")
            if champion == info.version:
                return {"version": info.version, "outcome": "already_champion", "champion": champion}
            state = _start(registry, info.version, champion, policy, by, holder)
            say(f"v{info.version}: canary against champion v{champion}, steps {policy.canary.steps} %")
        else:
            say(f"v{info.version}: resuming an interrupted rollout at step {state.step + 1}")
            info = registry.get_version(version)  # as the last holder left it
            if view.aliases.get("champion") == info.version or PENDING_TAG in info.tags:
                recorded = json.loads(info.tags.get(PENDING_TAG, "{}")).get("reason")
                reason = recorded or "canary passed every step; promoted before the controller stopped"
                return _promote(registry, settings, policy, state, reason, {}, by)
            if view.aliases.get("canary") != info.version:
                gone = f"the canary alias no longer points at v{info.version}"
                return _rollback(registry, state, f"rollout ended: {gone}", {}, by)
        if problems:  # approval withdrawn (or a tag changed) while the rollout was in flight
            return _rollback(registry, state, "; ".join(problems), {}, by)
        return _run(registry, settings, state, policy, source, tick, by, say, sleep, lease)


def _start(
    registry: Registry, version: str, champion: str, policy: Policy, by: str, holder: str
) -> RolloutState:
    client = registry.client
    run = client.create_run(
        registry.experiment_id(EXPERIMENT),
        run_name=f"rollout v{version}",
        tags={"tuneloop.kind": "rollout", "model_version": version, "champion": champion, "holder": holder},
    )
    run_id = run.info.run_id
    for key, value in policy.canary.model_dump().items():
        client.log_param(run_id, key, str(value))
    with registry.lock("aliases"):
        set_weight(registry, 0.0)  # the alias appears before any traffic is sent to it
        registry.set_alias("canary", version)
        write_state(
            registry,
            run_id=run_id,
            champion=champion,
            by=by,
            step=0,
            started_at=time.time(),
            quality=frozenset(),
        )
        write_state(registry, version=version)  # last: a reader sees a whole state or none
        registry.record_event(
            version,
            "canary.started",
            {
                "by": by,
                "at": now_iso(),
                "reason": "rollout started",
                "alias": "canary",
                "from": None,
                "to": version,
                "champion": champion,
            },
        )
    state = read_state(registry)
    assert state is not None
    return state


def _run(
    registry: Registry,
    settings: Settings,
    state: RolloutState,
    policy: Policy,
    source: MetricsSource,
    tick: float,
    by: str,
    say: Echo,
    sleep: Callable[[float], None],
    lease: Lease,
) -> dict[str, Any]:
    steps, rules = policy.canary.steps, policy.canary
    looks = 0
    quality = set(state.quality)  # quality checks judged so far in this rollout (one is needed)
    verdict: Verdict | None = None
    for index in range(state.step, len(steps)):
        lease.check()
        if not _enter_step(registry, state, index, steps[index], by, quality):
            return _aborted(registry, state)
        window, began = source.window(), time.monotonic()
        say(f"  step {index + 1}/{len(steps)}: {steps[index]:g}% of traffic")
        while True:
            sleep(tick)
            lease.check()
            view = read_model(registry)
            if view.state is None or view.state.version != state.version:
                return _aborted(registry, state)
            if view.rollback is not None:  # someone's withdrawal of this canary was cut short
                return _rollback(registry, state, view.rollback["reason"], {}, by)
            if view.aliases.get("canary") != state.version:
                gone = f"the canary alias no longer points at v{state.version}"
                return _rollback(registry, state, f"rollout ended: {gone}", {}, by)
            elapsed = time.monotonic() - began
            try:
                delta = window.read()
            except MetricsError as exc:  # a missed reading holds; it never passes or fails a step
                if elapsed >= rules.step_deadline_seconds:
                    ended = f"step {index + 1} reached its deadline of {rules.step_deadline_seconds:g} s"
                    return _rollback(registry, state, f"{ended} with metrics unreadable: {exc}", {}, by)
                say(f"    metrics unreadable, holding: {exc}")
                continue
            verdict = judge_step(
                index,
                delta,
                rules,
                elapsed,
                canary=state.version,
                champion=state.champion,
                quality_before=bool(quality),
            )
            looks += 1
            _log(registry, state.run_id, verdict, looks)
            if not verdict.failed:
                quality |= verdict.judged & set(QUALITY)
            if verdict.action != "hold":
                break
            if looks % 10 == 1:  # the first hold of a step, then every tenth: progress, not noise
                say("    hold: " + "; ".join(verdict.reasons))
        say(f"    {verdict.action}: " + "; ".join(verdict.reasons))
        if verdict.failed:
            return _rollback(registry, state, "; ".join(verdict.reasons), verdict.figures, by)
    assert verdict is not None
    lease.check()
    reason = "canary passed every step: " + "; ".join(verdict.reasons)
    return _promote(registry, settings, policy, state, reason, verdict.figures, by)


def _enter_step(
    registry: Registry, state: RolloutState, index: int, percent: float, by: str, quality: set[str]
) -> bool:
    """Set the weight for step `index` and record it; False when the rollout was withdrawn."""
    with registry.lock("aliases"):
        view = read_model(registry)
        if view.rollback is not None or view.state is None or view.state.version != state.version:
            return False
        set_weight(registry, percent / 100.0)
        write_state(registry, step=index, started_at=time.time(), quality=frozenset(quality))
        registry.record_event(
            state.version,
            "canary.step",
            {
                "by": by,
                "at": now_iso(),
                "reason": f"step {index + 1}",
                "alias": "canary",
                "from": state.champion,
                "to": state.version,
                "weight": percent / 100.0,
            },
        )
    return True


def _log(registry: Registry, run_id: str | None, verdict: Verdict, look: int) -> None:
    if run_id is None:
        return
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = [Metric(k, float(v), stamp, look) for k, v in verdict.figures.items() if v is not None]
    registry.client.log_batch(run_id, metrics=metrics)


def _rollback(
    registry: Registry, state: RolloutState, reason: str, figures: dict[str, Any], by: str
) -> dict[str, Any]:
    """Withdraw this rollout's canary (finishing a withdrawal already recorded, if there is one)."""
    with registry.lock("aliases"):
        view = read_model(registry)
        if view.rollback is not None:
            reason = view.rollback["reason"]
            finish_withdrawal(registry, view.rollback)
        elif view.state is not None and view.state.version == state.version:
            withdraw_canary(registry, state.version, reason, by, figures)
        else:
            return _aborted(registry, state)
    return _rolled_back(state.version, reason, figures, state)


def _rolled_back(
    version: str, reason: str, figures: dict[str, Any], state: RolloutState | None
) -> dict[str, Any]:
    return {
        "version": version,
        "outcome": "rolled_back",
        "reason": reason,
        "figures": figures,
        "champion": state.champion if state else None,
    }


def _promote(
    registry: Registry,
    settings: Settings,
    policy: Policy,
    state: RolloutState,
    reason: str,
    figures: dict[str, Any],
    by: str,
) -> dict[str, Any]:
    problems = promotion_problems(registry.get_version(state.version), policy)
    if problems and registry.aliases().get("champion") != state.version:  # approval withdrawn meanwhile
        return _rollback(registry, state, "; ".join(problems), figures, by)
    result = promote_rollout(settings, state.version, reason, by, figures, registry=registry)
    if result is None:  # withdrawn after the last judgement: the rollback wins
        return _aborted(registry, state)
    return {
        "version": state.version,
        "outcome": "promoted",
        "champion": result["champion"],
        "previous": result["previous"],
        "figures": figures,
    }


def _aborted(registry: Registry, state: RolloutState) -> dict[str, Any]:
    finish_run(registry, state.run_id, "aborted", "withdrawn by `tuneloop rollback`")
    return {"version": state.version, "outcome": "aborted", "champion": state.champion}
