"""Where the controller reads serving metrics: ONE adapter, two sources.

- `EndpointSource`: the service's own `/metrics` (Prometheus text format), one URL per replica,
  summed. The embedded default: nothing to run beside the service.
- `PrometheusSource`: a Prometheus server's HTTP API (`/api/v1/query`), PromQL summing every
  replica it scrapes: the fleet path.

Both read *cumulative* counters and return them per version (counters.VersionCounters); the
controller keeps the reading taken when a step began and judges the difference. A Prometheus
reading lags the service by up to one scrape interval, so the controller judges on a tick, never
on a single reading.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from tuneloop.rollout.counters import VersionCounters, counters_from_samples

# PromQL, one query per series; `sum by` folds replicas (and workers) into one figure per version.
PROMQL = (
    "sum by (model_version) (tuneloop_items_total)",
    "sum by (model_version) (tuneloop_model_errors_total)",
    "sum by (model_version) (tuneloop_model_seconds_count)",
    "sum by (model_version, le) (tuneloop_model_seconds_bucket)",
    "sum by (model_version, label) (tuneloop_predicted_total)",
    "sum by (model_version, agreed) (tuneloop_shadow_total)",
    "sum by (model_version, correct) (tuneloop_feedback_total)",
)


class MetricsError(RuntimeError):
    """Metrics could not be read; the message names the source."""


class MetricsSource(Protocol):
    """Reads cumulative per-version counters from wherever they are."""

    def read(self) -> dict[str, VersionCounters]: ...

    def describe(self) -> str: ...


def parse_prometheus_text(text: str) -> Iterator[tuple[str, Mapping[str, str], float]]:
    """(sample name, labels, value) of every sample in a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, float(sample.value)


class EndpointSource:
    """Scrapes the service's `/metrics` on every replica listed and sums them."""

    def __init__(
        self, urls: Sequence[str], timeout_s: float = 10.0, headers: Mapping[str, str] | None = None
    ):
        if not urls:
            raise ValueError("EndpointSource needs at least one /metrics URL")
        self.urls = list(urls)
        self.timeout_s = timeout_s
        self.headers = dict(headers or {})

    def describe(self) -> str:
        return "service /metrics at " + ", ".join(self.urls)

    def read(self) -> dict[str, VersionCounters]:
        import httpx

        samples: list[tuple[str, Mapping[str, str], float]] = []
        for url in self.urls:
            try:
                response = httpx.get(url, timeout=self.timeout_s, headers=self.headers)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise MetricsError(f"reading {url} failed: {exc}") from exc
            samples.extend(parse_prometheus_text(response.text))
        return counters_from_samples(samples)


class PrometheusSource:
    """Queries a Prometheus server (`base_url`, e.g. http://prometheus:9090) with PromQL."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, selector: str = ""):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        # e.g. '{job="tuneloop"}' to keep one deployment's series apart from another's.
        self.selector = selector

    def describe(self) -> str:
        return f"Prometheus at {self.base_url}"

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

    def read(self) -> dict[str, VersionCounters]:
        samples: list[tuple[str, Mapping[str, str], float]] = []
        for promql in PROMQL:
            series = promql.rsplit("(", 1)[1].rstrip(")")
            query = promql.replace(series, series + self.selector) if self.selector else promql
            for row in self._query(query):
                labels = {str(k): str(v) for k, v in dict(row["metric"]).items()}  # type: ignore[call-overload]
                value = float(row["value"][1])  # type: ignore[index]  # [timestamp, "value"]
                samples.append((series, labels, value))
        return counters_from_samples(samples)
