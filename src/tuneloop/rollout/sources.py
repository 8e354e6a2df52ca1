"""Where the controller reads serving metrics: ONE adapter, two sources.

- `EndpointSource`: the service's own `/metrics` (Prometheus text format) on every replica. The
  embedded default: nothing to run beside the service. Replicas are the URLs listed, or with
  `resolve=True` every address each URL's host name resolves to: a Kubernetes headless Service
  (`tuneloop-service-pods`) answers with one address per ready pod, where the load-balanced
  Service would hand each scrape to whichever pod it picks.
- `PrometheusSource`: a Prometheus server's HTTP API (`/api/v1/query`): the fleet path.

Each source answers two questions. `read()`: the cumulative counters per version now (a glance:
the demo's report, a check that anything is scraped). `window()`: a `StepWindow` whose `read()`
is the traffic *since the window began*, which is what a canary step is judged on. Both sources
take gains per series and per replica (counters.py says why): the endpoint source by comparing
its own readings (counters.CounterWindow), Prometheus with PromQL `increase()` over the window.
A Prometheus reading lags the service by up to one scrape interval, so the controller judges on
a tick, never on a single reading.

Both read one project's series only (`project`; the service labels every series with its project):
two projects' canaries run at once on one service, with the same version numbers, and neither may
be judged on the other's traffic.
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from tuneloop.config import DEFAULT_PROJECT
from tuneloop.rollout.counters import (
    CounterWindow,
    Reading,
    Sample,
    VersionCounters,
    counters_from_samples,
    in_project,
    reading_counters,
    reading_from_samples,
)

# One PromQL query per series: (series, labels kept). `sum by` folds replicas and workers into one
# figure per version; in a window the sum is taken over per-series `increase()`s, never the reverse.
PROMQL = (
    ("tuneloop_items_total", "model_version"),
    ("tuneloop_model_errors_total", "model_version"),
    ("tuneloop_model_seconds_count", "model_version"),
    ("tuneloop_item_seconds_bucket", "model_version, le"),
    ("tuneloop_predicted_total", "model_version, label"),
    ("tuneloop_shadow_total", "model_version, agreed"),
    ("tuneloop_feedback_total", "model_version, correct"),
)


class MetricsError(RuntimeError):
    """Metrics could not be read; the message names the source."""


class StepWindow(Protocol):
    """The traffic of one canary step, measured from when the window was opened."""

    def read(self) -> dict[str, VersionCounters]: ...


class MetricsSource(Protocol):
    """Reads per-version counters from wherever they are."""

    def read(self) -> dict[str, VersionCounters]: ...

    def window(self) -> StepWindow: ...

    def describe(self) -> str: ...


def parse_prometheus_text(text: str) -> Iterator[Sample]:
    """(sample name, labels, value) of every sample in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, float(sample.value)


def project_selector(selector: str, project: str) -> str:
    """`selector` (e.g. '{job="tuneloop"}', or '') with the project's matcher added.

    The default project also matches series without the label (`project=~"default|"`: an empty
    value matches an absent label in PromQL), as EndpointSource counts them, so a service from
    before projects is still read. A selector that names `project` itself is refused: the project
    comes from the controller's settings, never from a second place that could disagree.
    """
    body = selector.strip()
    if body and not (body.startswith("{") and body.endswith("}")):
        raise ValueError(f"selector {selector!r} is not a label selector such as '{{job=\"tuneloop\"}}'")
    inner = body[1:-1].strip().rstrip(",") if body else ""
    if re.search(r"(^|[{,\s])project\s*(=|!=|=~|!~)", inner):
        raise ValueError(f"selector {selector!r} names `project`: the source adds its own project's matcher")
    matcher = f'project=~"{project}|"' if project == DEFAULT_PROJECT else f'project="{project}"'
    return "{" + (f"{inner}," if inner else "") + matcher + "}"


def resolve_replicas(url: str) -> list[str]:
    """`url` once per address its host resolves to (one address family: the first answer's).

    One family, because a dual-stack name answers each pod twice (A and AAAA): reading both would
    count every replica twice.
    """
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        raise MetricsError(f"{url!r} names no host to resolve")
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise MetricsError(f"resolving {host!r} (every replica of {url}) failed: {exc}") from exc
    family = answers[0][0]
    addresses = sorted({str(a[4][0]) for a in answers if a[0] == family})
    netloc = "[{}]:{}" if family == socket.AF_INET6 else "{}:{}"
    return [urlunsplit(parts._replace(netloc=netloc.format(a, port))) for a in addresses]


class EndpointSource:
    """Scrapes the service's `/metrics` on every replica (listed, or resolved) and sums `project`'s series."""

    def __init__(
        self,
        urls: Sequence[str],
        timeout_s: float = 10.0,
        headers: Mapping[str, str] | None = None,
        resolve: bool = False,
        project: str = DEFAULT_PROJECT,
    ):
        if not urls:
            raise ValueError("EndpointSource needs at least one /metrics URL")
        self.urls = list(urls)
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})
        self.resolve = resolve
        self.project = project

    def describe(self) -> str:
        every = "every address of " if self.resolve else ""
        return f"service /metrics ({self.project}) at {every}" + ", ".join(self.urls)

    def replicas(self) -> list[str]:
        """The /metrics URL of every replica, now."""
        if not self.resolve:
            return self.urls
        return [replica for url in self.urls for replica in resolve_replicas(url)]

    def scrape(self) -> Reading:
        """Every replica's tuneloop_* series of this project; one unreadable replica fails the reading."""
        import httpx

        reading: Reading = {}
        for url in self.replicas():
            try:
                response = httpx.get(url, timeout=self.timeout_s, headers=self.headers)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise MetricsError(f"reading {url} failed: {exc}") from exc
            samples = parse_prometheus_text(response.text)
            reading.update(reading_from_samples(url, (s for s in samples if in_project(s[1], self.project))))
        return reading

    def read(self) -> dict[str, VersionCounters]:
        return reading_counters(self.scrape())

    def window(self) -> StepWindow:
        return _EndpointWindow(self)


class _EndpointWindow:
    """Gains since the window opened, from this source's own readings (counters.CounterWindow)."""

    def __init__(self, source: EndpointSource) -> None:
        self.source = source
        self.counters = CounterWindow()
        with contextlib.suppress(MetricsError):  # the baseline; if it fails, the first read is
            self.counters.add(source.scrape())

    def read(self) -> dict[str, VersionCounters]:
        return self.counters.add(self.source.scrape())


class PrometheusSource:
    """Queries a Prometheus server (`base_url`, e.g. http://prometheus:9090) with PromQL for `project`."""

    def __init__(
        self, base_url: str, timeout_s: float = 10.0, selector: str = "", project: str = DEFAULT_PROJECT
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # e.g. '{job="tuneloop"}' to keep one deployment's series apart from another's; the
        # project's matcher is added to it (project_selector), so every query reads one project.
        self.selector = selector
        self.project = project
        self.query_selector = project_selector(selector, project)

    def describe(self) -> str:
        return f"Prometheus at {self.base_url} ({self.query_selector})"

    def _query(self, promql: str) -> list[dict[str, object]]:
        import httpx

        url = f"{self.base_url}/api/v1/query"
        try:
            response = httpx.get(url, params={"query": promql}, timeout=self.timeout_s)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsError(f"PromQL {promql!r} at {url} failed: {exc}") from exc
        if body.get("status") != "success":
            raise MetricsError(f"PromQL {promql!r} at {url}: {body.get('error', body)}")
        return list(body["data"]["result"])

    def query_counters(self, window_s: float | None = None) -> dict[str, VersionCounters]:
        """Cumulative counters, or with `window_s` what each series gained over the last window_s."""
        samples: list[Sample] = []
        for series, by in PROMQL:
            selected = series + self.query_selector
            if window_s is not None:
                selected = f"increase({selected}[{math.ceil(window_s * 1000)}ms])"
            for row in self._query(f"sum by ({by}) ({selected})"):
                labels = {str(k): str(v) for k, v in dict(row["metric"]).items()}  # type: ignore[call-overload]
                value = float(row["value"][1])  # type: ignore[index]  # [timestamp, "value"]
                samples.append((series, labels, value))
        return counters_from_samples(samples)

    def read(self) -> dict[str, VersionCounters]:
        return self.query_counters()

    def window(self) -> StepWindow:
        return _PrometheusWindow(self, time.time())


class _PrometheusWindow:
    """`increase()` over the time since the window opened: per series, so resets are handled."""

    def __init__(self, source: PrometheusSource, began: float) -> None:
        self.source, self.began = source, began

    def read(self) -> dict[str, VersionCounters]:
        # A range shorter than two scrapes holds no pair of samples: increase() answers nothing and
        # the step holds, which is the right answer for a window that young.
        return self.source.query_counters(max(time.time() - self.began, 1.0))
