"""Adapters that read the numbers `steps.triggers.decide_round` decides on.

New rows come from snapshot manifests (rows in snapshots newer than the champion's `data_snapshot`),
round times from the registry (each round registers one version; its creation time is when the round
finished), drift from the service's `/metrics` (per-version counters since the service started, so a
new champion starts its own sample) compared with the label mix of the data the champion learnt.

Drift reads the replicas the rollout reads (steps/metrics.replica_source): every address of
TUNELOOP_ROLLOUT_REPLICAS_URL (a headless Service) when set, else each URL the service URL lists,
comma-separated. It is judged on their sum; when one cannot be read, drift is not judged (with a
note naming it) rather than judged on a share of the traffic.
"""

from __future__ import annotations

import time
from typing import Any

from tuneloop.config import Settings
from tuneloop.data import snapshot as snap
from tuneloop.registry.policy import load_policy
from tuneloop.registry.store import Registry, VersionInfo
from tuneloop.steps.metrics import replica_source
from tuneloop.steps.triggers import Decision, Signals, decide_round, label_mix_distance, read_prometheus

METRICS_TIMEOUT_S = 5.0  # /metrics answers in milliseconds; 5 s means the service is in trouble


def new_rows_since(settings: Settings, champion: VersionInfo | None) -> int:
    """Rows (train + eval + golden) in snapshots the champion has not been trained on, leaving out the
    excluded ones (no round would train on them)."""
    from tuneloop.steps.exclusions import excluded_snapshots

    ids = snap.snapshot_ids(settings.snapshots_dir)
    seen = champion.tags.get("data_snapshot") if champion else None
    floor = snap.snapshot_number(seen) if seen else 0
    excluded = excluded_snapshots(settings)
    return sum(
        sum(snap.load_manifest(settings.snapshots_dir, sid).rows.values())
        for sid in ids
        if snap.snapshot_number(sid) > floor and sid not in excluded
    )


def trained_label_mix(settings: Settings, champion: VersionInfo) -> dict[str, float]:
    """Training rows per label over every snapshot up to the champion's (replay draws from them all)."""
    upto = champion.tags.get("data_snapshot")
    mix: dict[str, float] = {}
    if not upto:
        return mix
    for sid in snap.snapshot_ids(settings.snapshots_dir):
        if snap.snapshot_number(sid) > snap.snapshot_number(upto):
            break
        for label, n in snap.load_manifest(settings.snapshots_dir, sid).counts.get("train", {}).items():
            mix[label] = mix.get(label, 0.0) + n
    return mix


def fetch_metrics(metrics_url: str, headers: dict[str, str], timeout_s: float = METRICS_TIMEOUT_S) -> str:
    """The text of one replica's `/metrics` (with the service's bearer token in `headers`)."""
    import urllib.request

    request = urllib.request.Request(metrics_url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        return str(resp.read().decode("utf-8"))


def sum_figures(readings: list[dict[str, Any]]) -> dict[str, Any]:
    """One champion reading from each replica's (read_prometheus), summed: counts add up."""
    total: dict[str, Any] = {"answered": 0.0, "confidence_sum": 0.0, "confidence_count": 0.0, "labels": {}}
    for reading in readings:
        for key in ("answered", "confidence_sum", "confidence_count"):
            total[key] += reading[key]
        for label, n in reading["labels"].items():
            total["labels"][label] = total["labels"].get(label, 0.0) + n
    return total


def gather_signals(
    settings: Settings,
    service_url: str | None,
    registry: Registry | None = None,
    metrics_text: str | None = None,
) -> tuple[Signals, list[float]]:
    """Signals and round times as of now. An unreachable service leaves drift unmeasured, with a note."""
    registry = registry or Registry(settings)
    champion = registry.alias("champion")
    round_times = [v.created_ms / 1000.0 for v in registry.versions()]
    rows = new_rows_since(settings, champion)
    notes: list[str] = []
    if champion is None:
        return Signals(
            new_rows=rows, notes=["no champion yet: nothing serves, drift not judged"]
        ), round_times
    texts = [metrics_text] if metrics_text is not None else []
    if metrics_text is None and service_url:
        source = replica_source(service_url, settings.project)
        try:
            urls = source.replicas()
        except RuntimeError as exc:  # rollout's MetricsError: the replicas' name does not resolve
            notes.append(f"drift not judged: {exc}")
            urls = []
        for url in urls:
            try:
                texts.append(fetch_metrics(url, source.headers))
            except OSError as exc:
                notes.append(f"drift not judged: {url} unreachable ({exc})")
    if not texts or notes:
        notes = notes or ["drift not judged: no service URL"]
        return Signals(new_rows=rows, notes=notes), round_times
    figures = sum_figures([read_prometheus(text, champion.version, settings.project) for text in texts])
    count = figures["confidence_count"]
    return (
        Signals(
            new_rows=rows,
            served=int(figures["answered"]),
            mean_confidence=figures["confidence_sum"] / count if count else None,
            label_mix_distance=label_mix_distance(figures["labels"], trained_label_mix(settings, champion)),
            notes=notes,
        ),
        round_times,
    )


def decide_step(
    settings: Settings,
    trigger: str,
    service_url: str | None = None,
    registry: Registry | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Read the signals and decide (`tuneloop` flows call this before any work)."""
    if trigger == "manual":  # no reading needed: an operator decided
        return decide_round(trigger, Signals(), [], None, now or time.time()).to_dict()
    policy = load_policy(settings.policy_path)
    signals, round_times = gather_signals(settings, service_url, registry)
    decision: Decision = decide_round(trigger, signals, round_times, policy.triggers, now or time.time())
    return {**decision.to_dict(), "signals": {k: v for k, v in vars(signals).items() if k != "notes"}}
