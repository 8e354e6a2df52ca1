"""Step: where the canary's figures are read (the service's /metrics, or a Prometheus server).

The rollout controller judges cumulative per-version counters from a `MetricsSource`
(rollout/sources.py); this module builds the right one from what a front-end was told.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from tuneloop.config import DEFAULT_PROJECT

DEFAULT_SERVICE_URL = "http://127.0.0.1:3000"  # where `tuneloop serve` listens by default


def build_source(
    metrics_urls: Sequence[str] = (),
    prometheus: str | None = None,
    selector: str = "",
    resolve: bool = False,
    project: str = DEFAULT_PROJECT,
    token: str | None = None,
) -> Any:
    """A Prometheus server when `prometheus` is given, else each `/metrics` URL, summed.

    Either reads `project`'s series only (the service labels each with its project).
    `selector` (e.g. '{job="tuneloop"}') narrows every PromQL series; `resolve` reads every address
    each URL's host resolves to (a headless Service: one per replica). Scraping the service needs
    a bearer token when it has auth on: the read-only TUNELOOP_METRICS_TOKEN when set, else the
    all-scopes TUNELOOP_API_TOKEN (`token`, when given, instead).
    """
    from tuneloop.rollout.sources import EndpointSource, PrometheusSource

    if prometheus:
        return PrometheusSource(prometheus, selector=selector, project=project)
    # The read-only token first: a leaked scrape credential must not be able to post /feedback.
    token = token or os.environ.get("TUNELOOP_METRICS_TOKEN") or os.environ.get("TUNELOOP_API_TOKEN")
    return EndpointSource(
        list(metrics_urls) or [DEFAULT_SERVICE_URL + "/metrics"],
        headers={"authorization": f"Bearer {token}"} if token else {},
        resolve=resolve,
        project=project,
    )


def service_urls(service_url: str | None = None) -> list[str]:
    """Each replica's base URL from TUNELOOP_SERVICE_URL's form: one URL or several, comma-separated.

    The rollout's canary figures and the drift watch read the same list, so both sum every replica.
    """
    urls = [u.strip().rstrip("/") for u in (service_url or DEFAULT_SERVICE_URL).split(",") if u.strip()]
    return urls or [DEFAULT_SERVICE_URL]


def metrics_source(service_url: str | None = None, project: str = DEFAULT_PROJECT) -> Any:
    """Where the canary's figures come from: a Prometheus server when TUNELOOP_ROLLOUT_PROMETHEUS_URL
    is set (a fleet of replicas, summed by PromQL), else every replica's /metrics (`replica_source`).

    `service_url` may list several replicas, comma-separated: behind one Kubernetes Service a single
    URL reaches one replica per scrape, so its counters alone would judge a share of the traffic.
    Either way only `project`'s series count.
    """
    prometheus = os.environ.get("TUNELOOP_ROLLOUT_PROMETHEUS_URL")
    if prometheus:
        selector = os.environ.get("TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR", "")
        return build_source(prometheus=prometheus, selector=selector, project=project)
    return replica_source(service_url, project)


def replica_source(service_url: str | None = None, project: str = DEFAULT_PROJECT) -> Any:
    """Every replica's /metrics, summed (rollout/sources.EndpointSource): every address of
    TUNELOOP_ROLLOUT_REPLICAS_URL when set (a headless Service such as tuneloop-service-pods: its
    name resolves to one address per ready pod), else each URL `service_url` lists.

    The rollout (when not on Prometheus) and the drift watch both read through this, so they read
    the same replicas.
    """
    replicas = os.environ.get("TUNELOOP_ROLLOUT_REPLICAS_URL")
    return build_source(
        [url + "/metrics" for url in service_urls(replicas or service_url)],
        resolve=bool(replicas),
        project=project,
    )


def model_errors(reading: dict[str, Any], version: str) -> float:
    """Model-call errors counted so far for `version` in one reading of a source (0 when unseen)."""
    counters = reading.get(version)
    return float(counters.errors) if counters is not None else 0.0
