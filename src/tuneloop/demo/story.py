"""`tuneloop demo`: the whole loop on the bundled data, on embedded defaults, with the service running.

1. `tuneloop serve` starts on 127.0.0.1 (service.py).
2. Three drops of the bundled support-intent data land one after another (base, drift-1 with two
   messy files, drift-2); each is ingested and trained from the champion, gated and converted.
   The first version is promoted directly (nothing to compare with) and the service starts
   answering; every later one that passes goes through the canary steps of the demo policy under
   synthetic traffic with feedback, and `rollout_step` promotes it or rolls it back.
3. A deliberately bad candidate: a copy of the champion (same run, same files) registered as a new
   version, with the service restarted under the documented fault switch
   TUNELOOP_SERVE_FAULT_VERSION=<that version> TUNELOOP_SERVE_FAULT_ERROR_RATE=0.5, so half its
   model calls raise. The controller rolls it back while the champion answers every request
   (failed requests and champion model-call errors are counted: both must be 0).

State stays in TUNELOOP_HOME, so `tuneloop status`, `tuneloop history` and the MLflow UI show the
result afterwards.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

from tuneloop.config import Settings, mask_uri
from tuneloop.demo.report import figure, render_table, round_metrics, wrap
from tuneloop.demo.service import DemoService, Traffic

Echo = Callable[[str], None]
FAULT_ERROR_RATE = "0.5"  # half the bad candidate's model calls raise: the error check trips at once


def demo_settings(settings: Settings) -> Settings:
    """The demo policy (auto-approval, canary pacing in seconds) unless TUNELOOP_POLICY_PATH is set."""
    import os

    from tuneloop.config import PROJECT_ROOT

    if "TUNELOOP_POLICY_PATH" in os.environ:
        return settings
    return settings.model_copy(update={"policy_path": PROJECT_ROOT / "registry" / "policy.demo.yaml"})


def run_demo(settings: Settings, echo: Echo | None = None, **train_overrides: Any) -> dict[str, Any]:
    """Run the story; return {rounds: [{version, drop, metrics, outcome, decision}], drops, ...}.

    `train_overrides` go to every train_step (tests: epochs, LoRA settings for the tiny model).
    """
    from tuneloop.steps.bundled import bundled_drops, write_messy_files
    from tuneloop.steps.ingest import ingest_step

    settings = demo_settings(settings)
    start = time.monotonic()
    say = echo or (lambda _msg: None)
    landing = settings.landing_dir
    landing.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[str, str]] = []
    rounds: list[dict[str, Any]] = []
    drops: list[dict[str, Any]] = []
    services = [DemoService(settings)]  # the bad candidate's restart appends the second
    service = services[0]
    try:
        service.start()
        _say(say, f"service: `tuneloop serve` starting at {service.url} (log {service.log_path})")
        for bundled in bundled_drops(settings.work_dir / "bundled"):
            target = landing / bundled.path.name
            shutil.copy2(bundled.path, target)
            drop = [target]
            if bundled.messy:
                # Two messy files with one row of each quarantine reason, a duplicate and two good
                # rows (tuneloop.data.messy).
                drop.extend(write_messy_files(landing))
            samples += bundled.samples
            _say(say, f"drop {bundled.name}: {', '.join(p.name for p in drop)}")
            ingested = ingest_step(settings, drop)
            _say(say, "ingest: " + ingested["message"], "  ")
            drops.append({"drop": bundled.name, "ingest": ingested})
            if ingested["snapshot"]:
                rounds.append(
                    _round(
                        settings, bundled.name, ingested["snapshot"], service, samples, say, train_overrides
                    )
                )
        bad = _bad_candidate(settings, services, rounds, samples, say)
        rounds += [bad] if bad else []
    finally:
        for each in services:
            each.stop()
    storage = _collect(settings, say)
    return {**_finish(settings, rounds, drops, time.monotonic() - start, say), "storage": storage}


def _collect(settings: Settings, say: Echo) -> dict[str, Any]:
    """What a nightly `gc` flow does, once, at the end: the versions outside the demo policy's
    retention lose their rebuildable bulk; then what the home holds."""
    from tuneloop.steps.gc import gc_step
    from tuneloop.steps.status import folder_bytes

    collected = gc_step(settings, by="demo")
    home = folder_bytes(settings.home_dir)
    _say(say, f"gc: {collected['message']}; {settings.home_dir} now holds {home / 1e6:.0f} MB")
    return {"gc": {k: collected[k] for k in ("bytes", "message")}, "home_bytes": home}


def _v(version: str | None) -> str:
    return "-" if version is None else f"v{version}"


def _say(say: Echo, text: str, indent: str = "") -> None:
    """`text` wrapped at 80 columns; its own leading spaces (the controller's) add to `indent`."""
    stripped = text.lstrip(" ")
    for line in wrap(stripped, indent + " " * (len(text) - len(stripped))):
        say(line)


def _round(
    settings: Settings,
    drop: str,
    snapshot_id: str,
    service: DemoService,
    samples: list[tuple[str, str]],
    say: Echo,
    train_overrides: dict[str, Any],
) -> dict[str, Any]:
    """Train on the snapshot, gate, convert, then promote the first version or canary a later one."""
    from tuneloop.demo.report import serves_line, students_line
    from tuneloop.steps.compress import compress_for_release
    from tuneloop.steps.convert import convert_step
    from tuneloop.steps.release import promote_step, release_problems
    from tuneloop.steps.round import train_step
    from tuneloop.steps.versions import alias_version

    champion = alias_version(settings, "champion")
    parent = f"champion v{champion}'s adapter" if champion else "the base model"
    _say(say, f"train: a LoRA round on {snapshot_id} from {parent}", "  ")
    trained = train_step(settings, snapshot_id=snapshot_id, progress=False, **train_overrides)
    version, metrics = str(trained["version"]), round_metrics(trained)
    row: dict[str, Any] = {"version": version, "drop": drop, "snapshot": snapshot_id, "metrics": metrics}
    gate = "passed" if trained["gate"]["passed"] else "refused"
    _say(
        say,
        f"train: v{version} macro-F1 {figure(metrics['macro_f1'])}, golden "
        f"{figure(metrics['golden_macro_f1'])}; gate {gate}",
        "  ",
    )
    if not trained["gate"]["passed"]:
        reasons = list(trained["gate"]["reasons"])
        for reason in reasons:
            _say(say, "- " + reason, "    ")
        # The table shows the first reason (all of them are above, and in the JSON's `reasons`).
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        first = reasons[0].split(": ")[0] if reasons else "refused"
        return {**row, "outcome": "refused", "decision": f"gate: {first}{more}", "reasons": reasons}
    compressed = compress_for_release(settings, version)  # policy `compress.enabled`
    if compressed is not None:
        _say(say, "compress: " + students_line(compressed), "  ")
    converted = convert_step(settings, version)
    row["serves"] = serves_line(converted)
    _say(say, "serves: " + row["serves"], "  ")
    sets = converted["parity"]["sets"]
    agreement = min(s["int8_argmax_agreement"] or 0.0 for s in sets.values())
    metrics["int8_agreement"] = agreement
    passed = converted["parity"]["passed"]
    _say(
        say,
        f"convert: INT8 parity {'passed' if passed else 'FAILED'} (argmax agreement {agreement:.4f})",
        "  ",
    )
    if not passed:
        return {**row, "outcome": "refused", "decision": f"INT8 parity failed (agreement {agreement:.4f})"}
    problems = release_problems(settings, version)
    if problems:
        _say(say, "not released: " + "; ".join(problems), "  ")
        return {**row, "outcome": "refused", "decision": "; ".join(problems)}
    if alias_version(settings, "champion") is None:
        promote_step(settings, version, reason=f"demo: first champion ({snapshot_id})", by="demo")
        _say(say, f"promote: v{version} is the first champion (no canary: nothing to compare with)", "  ")
        service.wait_ready(version, project=settings.project)
        _say(say, f"service: ready, serving champion v{version} at {service.url}", "  ")
        return {**row, "outcome": "promoted", "decision": "first champion, no canary"}
    return {**row, **_canary(settings, version, service, samples, say)}


def _canary(
    settings: Settings, version: str, service: DemoService, samples: list[tuple[str, str]], say: Echo
) -> dict[str, Any]:
    """Roll `version` out under synthetic traffic; the outcome, decision and champion errors."""
    from tuneloop.steps.metrics import build_source, model_errors
    from tuneloop.steps.rollout import canary_steps, rollout_step

    service.wait_ready()  # a home with a champion from an earlier run: the service may still load it
    source = build_source([f"{service.url}/metrics"], project=settings.project)
    before = source.read()
    with Traffic(service.url, samples, canary=version) as traffic:
        result = rollout_step(
            settings, version, source, by="demo", tick_s=0.5, echo=lambda m: _say(say, m, "  ")
        )
    champion = str(result.get("champion") if result["outcome"] != "promoted" else result["previous"])
    after = source.read()
    errors = model_errors(after, champion) - model_errors(before, champion)
    served = {
        "requests": traffic.requests,
        "items": dict(traffic.answered),
        "feedback": traffic.feedback,
        "failed_requests": len(traffic.failures),
        "champion_model_errors": int(errors),
    }
    _say(
        say,
        f"traffic: {traffic.requests} requests, items answered "
        + ", ".join(f"v{v} {n}" for v, n in sorted(traffic.answered.items()))
        + f"; {traffic.feedback} feedback; failed requests {len(traffic.failures)}",
        "  ",
    )
    outcome = result["outcome"]
    if outcome == "promoted":
        f = result.get("figures", {})
        decision = (
            f"canary passed {len(canary_steps(settings))} steps; "
            f"p95 {figure(f.get('p95_ms'), '.0f')} ms, error rate {figure(f.get('error_rate'), '.2f')}"
        )
    else:
        decision = str(result.get("reason", outcome))
    return {"outcome": outcome, "decision": decision, "traffic": served, "champion": result.get("champion")}


def _bad_candidate(
    settings: Settings,
    services: list[DemoService],
    rounds: list[dict[str, Any]],
    samples: list[tuple[str, str]],
    say: Echo,
) -> dict[str, Any] | None:
    """Register a copy of the champion, restart the service with the fault switch on it, roll it out."""
    from tuneloop.steps.rehearsal import register_champion_copy
    from tuneloop.steps.versions import alias_version

    champion = alias_version(settings, "champion")
    note = f"demo: a copy of champion v{champion} served with injected errors"
    copy = register_champion_copy(settings, note) if champion else None
    if copy is None:
        _say(say, "drop fault: skipped, no champion to roll a bad candidate out against")
        return None
    version, champion = copy["version"], copy["copy_of"]
    fault = {"TUNELOOP_SERVE_FAULT_VERSION": version, "TUNELOOP_SERVE_FAULT_ERROR_RATE": FAULT_ERROR_RATE}
    _say(say, f"drop fault: v{version}, a copy of champion v{champion}, made bad on purpose")
    _say(
        say,
        "service: restarting with the fault switch " + " ".join(f"{k}={v}" for k, v in fault.items()),
        "  ",
    )
    services[-1].stop()
    service = DemoService(settings, fault=fault)
    services.append(service)
    service.start().wait_ready(champion)
    _say(say, f"service: ready at {service.url}, champion v{champion}", "  ")
    # The same model as the champion: its offline figures are the champion's.
    same: dict[str, Any] = next((r["metrics"] for r in rounds if r["version"] == champion), {})
    row = {"version": version, "drop": "fault", "metrics": dict(same), "copy_of": champion}
    return {**row, **_canary(settings, version, service, samples, say)}


def _finish(
    settings: Settings, rounds: list[dict[str, Any]], drops: list[dict[str, Any]], seconds: float, say: Echo
) -> dict[str, Any]:
    from tuneloop.steps.versions import aliases as read_aliases

    aliases = read_aliases(settings)
    champion_errors = sum(
        r["traffic"]["failed_requests"] + r["traffic"]["champion_model_errors"]
        for r in rounds
        if "traffic" in r
    )
    say("")
    for line in render_table(rounds):
        say(line)
    say("")
    _say(
        say,
        f"champion {_v(aliases.get('champion'))}, previous {_v(aliases.get('previous'))}; "
        f"errors on the champion's path: {champion_errors}; {seconds:.0f} s",
    )
    uri = mask_uri(settings.resolved_tracking_uri)
    for text in (
        f"MLflow UI: mlflow ui --backend-store-uri {uri} then open http://127.0.0.1:5000",
        "service: tuneloop serve, then open http://127.0.0.1:3000/docs (OpenAPI)",
        "more: tuneloop status, tuneloop history",
    ):
        _say(say, text)
    return {
        "rounds": rounds,
        "drops": drops,
        "aliases": aliases,
        "champion_errors": champion_errors,
        "seconds": round(seconds, 1),
    }
