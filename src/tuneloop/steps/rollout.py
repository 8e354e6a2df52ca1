"""Step: the canary rollout controller (`tuneloop rollout VERSION`).

Composes the pure decision (tuneloop.rollout.analysis.judge_step), a metrics source
(tuneloop.rollout.sources) and the registry. Like Flagger's scheduler it reconciles once per tick:
read the counters, judge the traffic since the step began, then hold, advance, promote or roll back.

- Single flight: the whole rollout holds the lease lock `rollout` (Registry.lock), so a second
  rollout is refused at once, naming the holder; the lease (default 30 s, renewed every 10 s) frees
  the lock within 30 s of a controller dying.
- Crash-safe: where it stands lives in the registry (rollout_state.py). Started again after a
  crash, the controller resumes the same version at the recorded step, which begins a fresh window
  (the counters read before the crash are gone with the process): at most one window is repeated.
- Rolling back sets the canary weight to 0 before anything else (Argo Rollouts' abort order), then
  clears the alias and tags the version `rolled_back` with the reason and the figures.
- Promotion goes through release.promote_step (recorded intent, `previous` first), then weight 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tuneloop.config import Settings
from tuneloop.registry.policy import Policy, load_policy
from tuneloop.registry.store import Registry, RegistryError, current_user, now_iso
from tuneloop.rollout.analysis import Verdict, judge_step
from tuneloop.rollout.counters import diff
from tuneloop.rollout.sources import MetricsError, MetricsSource
from tuneloop.steps.release import promote_step, promotion_problems
from tuneloop.steps.rollout_state import (
    EXPERIMENT,
    RolloutState,
    clear_state,
    read_state,
    set_weight,
    withdraw_canary,
    write_state,
)

Echo = Callable[[str], None]


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
    state = read_state(registry)
    if problems and (state is None or state.version != info.version):
        raise RegistryError(f"v{info.version} cannot roll out: " + "; ".join(problems))
    with registry.lock("rollout", timeout_s=wait_s, lease_s=lease_s) as holder:
        state = read_state(registry)  # again, under the lock: the previous holder may have finished
        if state is not None and state.version != info.version:
            raise RegistryError(
                f"an interrupted rollout of v{state.version} is recorded in the registry; finish it "
                f"(`tuneloop rollout {state.version}`) or withdraw it (`tuneloop rollback --reason ...`)"
            )
        if state is None:
            champion = registry.aliases().get("champion")
            if champion is None:
                raise RegistryError("no champion to compare with: make the first one with `tuneloop promote`")
            if champion == info.version:
                return {"version": info.version, "outcome": "already_champion", "champion": champion}
            state = _start(registry, info.version, champion, policy, by, holder)
            say(f"v{info.version}: canary against champion v{champion}, steps {policy.canary.steps} %")
        else:
            say(f"v{info.version}: resuming an interrupted rollout at step {state.step + 1}")
            if registry.aliases().get("champion") == info.version:  # died after promoting: tidy up
                done = Verdict("promote", ["promoted before the controller stopped"], {})
                return _promote(registry, settings, state, done, by)
        if problems:  # approval withdrawn (or a tag changed) while the rollout was in flight
            return _rollback(registry, state, "; ".join(problems), {}, by)
        return _run(registry, settings, state, policy, source, tick, by, say, sleep)


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
        write_state(registry, run_id=run_id, champion=champion, by=by, step=0, started_at=time.time())
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
) -> dict[str, Any]:
    steps = policy.canary.steps
    looks = 0
    verdict: Verdict | None = None
    for index in range(state.step, len(steps)):
        if not _enter_step(registry, state, index, steps[index], by):
            return _aborted(registry, state)
        baseline, began = source.read(), time.monotonic()
        say(f"  step {index + 1}/{len(steps)}: {steps[index]:g}% of traffic")
        while True:
            sleep(tick)
            current = read_state(registry)
            if current is None or current.version != state.version:
                return _aborted(registry, state)
            try:
                delta = diff(source.read(), baseline)
            except MetricsError as exc:  # a missed reading holds; it never passes or fails a step
                say(f"    metrics unreadable, holding: {exc}")
                continue
            verdict = judge_step(
                index,
                delta,
                policy.canary,
                time.monotonic() - began,
                canary=state.version,
                champion=state.champion,
            )
            looks += 1
            _log(registry, state.run_id, verdict, looks)
            if verdict.action != "hold":
                break
            if looks % 10 == 1:  # the first hold of a step, then every tenth: progress, not noise
                say("    hold: " + "; ".join(verdict.reasons))
        say(f"    {verdict.action}: " + "; ".join(verdict.reasons))
        if verdict.action == "rollback":
            return _rollback(registry, state, "; ".join(verdict.reasons), verdict.figures, by)
    assert verdict is not None
    return _promote(registry, settings, state, verdict, by)


def _enter_step(registry: Registry, state: RolloutState, index: int, percent: float, by: str) -> bool:
    """Set the weight for step `index` and record it; False when the rollout was withdrawn."""
    with registry.lock("aliases"):
        current = read_state(registry)
        if current is None or current.version != state.version:
            return False
        set_weight(registry, percent / 100.0)
        write_state(registry, step=index, started_at=time.time())
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
    with registry.lock("aliases"):
        withdraw_canary(registry, state.version, reason, by, figures)
        clear_state(registry)
    _finish_run(registry, state.run_id, "rolled_back", reason)
    return {
        "version": state.version,
        "outcome": "rolled_back",
        "reason": reason,
        "figures": figures,
        "champion": state.champion,
    }


def _promote(
    registry: Registry, settings: Settings, state: RolloutState, verdict: Verdict, by: str
) -> dict[str, Any]:
    reason = "canary passed every step: " + "; ".join(verdict.reasons)
    registry.record_event(
        state.version,
        "canary.passed",
        {
            "by": by,
            "at": now_iso(),
            "reason": reason,
            "alias": "champion",
            "from": state.champion,
            "to": state.version,
            "figures": verdict.figures,
        },
    )
    result = promote_step(settings, state.version, reason=reason, by=by, registry=registry)
    with registry.lock("aliases"):
        set_weight(registry, 0.0)  # the canary alias is gone: all traffic is the new champion's
        clear_state(registry)
    _finish_run(registry, state.run_id, "promoted", reason)
    return {
        "version": state.version,
        "outcome": "promoted",
        "champion": result["champion"],
        "previous": result["previous"],
        "figures": verdict.figures,
    }


def _aborted(registry: Registry, state: RolloutState) -> dict[str, Any]:
    _finish_run(registry, state.run_id, "aborted", "withdrawn by `tuneloop rollback`")
    return {"version": state.version, "outcome": "aborted", "champion": state.champion}


def _finish_run(registry: Registry, run_id: str | None, outcome: str, reason: str) -> None:
    if run_id is None:
        return
    registry.client.set_tag(run_id, "outcome", outcome)
    registry.client.set_tag(run_id, "reason", reason[:4000])
    registry.client.set_terminated(run_id, "FINISHED" if outcome == "promoted" else "FAILED")
