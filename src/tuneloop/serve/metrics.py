"""Per-version Prometheus metrics (BentoML's own metrics carry no model version).

prometheus_client is imported when the first worker builds these, after BentoML has set
PROMETHEUS_MULTIPROC_DIR, so every worker writes its own files and BentoML's `/metrics` sums them.
Counters and histograms, which sum across processes, and a mean is sum / count (confidence, feedback
accuracy, shadow agreement). The one gauge, the time of the last successful registry read, takes
the oldest live worker's value (`livemin`): how stale the stalest worker is, which is what an
alert on `time() - tuneloop_registry_sync_timestamp_seconds` wants.

Every series carries a `project` label first (one observer per project, all writing the same
series): versions of two projects share numbers, so `model_version` alone would mix them, and the
rollout controller reads only its own project's series (rollout/sources.py). Cardinality stays
bounded: projects are declared in a file (projects.py), not taken from requests.
"""

from __future__ import annotations

from typing import Any

from tuneloop.config import DEFAULT_PROJECT

# Latency of one model call: 1 ms .. ~4 s in x2 steps (a tiny model answers in ~1 ms, MiniLM INT8
# batch 64 in ~300 ms on 2 cores).
LATENCY_BUCKETS = tuple(0.001 * 2**i for i in range(13))
# Items per model call: powers of two up to the largest max_batch_size anyone sets (256).
BATCH_BUCKETS = tuple(float(2**i) for i in range(9))
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

_METRICS: dict[str, Any] = {}


def _build() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    v = ["project", "model_version"]
    return {
        "requests": Counter("tuneloop_items", "Items answered, by the version that answered", v),
        "errors": Counter("tuneloop_model_errors", "Model calls that raised", v),
        "latency": Histogram("tuneloop_model_seconds", "Seconds per model call", v, buckets=LATENCY_BUCKETS),
        "item_latency": Histogram(
            "tuneloop_item_seconds",
            "Model seconds per item: a call's time over its items, observed once per item",
            v,
            buckets=LATENCY_BUCKETS,
        ),
        "batch": Histogram("tuneloop_batch_items", "Items per model call", v, buckets=BATCH_BUCKETS),
        "labels": Counter("tuneloop_predicted", "Predicted labels", [*v, "label"]),
        "confidence": Histogram(
            "tuneloop_confidence", "Top-1 probability of answers", v, buckets=CONFIDENCE_BUCKETS
        ),
        "shadow": Counter("tuneloop_shadow", "Canary items also scored by the champion", [*v, "agreed"]),
        "feedback": Counter("tuneloop_feedback", "Feedback received on answers", [*v, "correct"]),
        # Per tenant (serve/tenants.py). Bounded: tenant ids come from the tenants file, projects
        # from each tenant's list or "_other"; an unknown token is refused before any series.
        # requests counts every answer, errors those >= 400 but 429, throttled the 429s.
        "tenant_requests": Counter("tuneloop_tenant_requests", "Requests of a tenant", ["tenant", "project"]),
        "tenant_errors": Counter(
            "tuneloop_tenant_errors", "Requests of a tenant answered >= 400, 429 aside", ["tenant", "project"]
        ),
        "tenant_throttled": Counter(
            "tuneloop_tenant_throttled",
            "Requests of a tenant refused over its quota (429)",
            ["tenant", "project"],
        ),
        # Counts only, by entity type and door: an operator sees a rise without seeing the data.
        "personal": Counter(
            "tuneloop_personal_data",
            "Personal data found in request texts and replaced by placeholders",
            ["project", "entity", "endpoint"],
        ),
        # Many projects under a memory budget (serve/pool.py): how often models come and go.
        "loads": Counter(
            "tuneloop_model_loads", "Model versions loaded (downloaded, built, warmed)", ["project"]
        ),
        "evictions": Counter(
            "tuneloop_model_evictions",
            "Projects whose models were dropped to stay under the budget",
            ["project"],
        ),
        "synced": Gauge(
            "tuneloop_registry_sync_timestamp_seconds",
            "Unix time of the last successful registry read (the stalest worker's)",
            ["project"],
            multiprocess_mode="livemin",
        ),
    }


def count_tenant(tenant: str, project: str, status: int) -> None:
    """The middleware's on_tenant callback: builds the metrics on its first call, inside a worker
    (after BentoML has set PROMETHEUS_MULTIPROC_DIR), never when the guard is built."""
    PrometheusObserver().tenant(tenant, project, status)


class PrometheusObserver:
    """The scoring Observer that writes the metrics above for one project (one set per process,
    shared by every project's observer)."""

    def __init__(self, project: str = DEFAULT_PROJECT) -> None:
        if not _METRICS:
            _METRICS.update(_build())
        self.m = _METRICS
        self.project = project

    def batch(self, version: str, size: int, seconds: float) -> None:
        self.m["latency"].labels(self.project, version).observe(seconds)
        self.m["batch"].labels(self.project, version).observe(size)
        # Per item, so the canary's few-item calls and the champion's full ones compare fairly (the
        # rollout judges latency on this). One observation per item: a histogram takes no weights;
        # a 64-item call's observations measured 0.1 ms in multiprocess mode (the call: ~300 ms).
        per_item = self.m["item_latency"].labels(self.project, version)
        for _ in range(size):
            per_item.observe(seconds / size)

    def predicted(self, version: str, label: str, score: float) -> None:
        self.m["requests"].labels(self.project, version).inc()
        self.m["labels"].labels(self.project, version, label).inc()
        self.m["confidence"].labels(self.project, version).observe(score)

    def error(self, version: str) -> None:
        self.m["errors"].labels(self.project, version).inc()

    def shadow(self, version: str, agreed: bool) -> None:
        self.m["shadow"].labels(self.project, version, str(agreed).lower()).inc()

    def feedback(self, version: str, correct: bool) -> None:
        self.m["feedback"].labels(self.project, version, str(correct).lower()).inc()

    def tenant(self, tenant: str, project: str, status: int) -> None:
        """A tenant's request to `project` was answered `status` (the middleware's on_tenant)."""
        self.m["tenant_requests"].labels(tenant, project).inc()
        if status == 429:
            self.m["tenant_throttled"].labels(tenant, project).inc()
        elif status >= 400:
            self.m["tenant_errors"].labels(tenant, project).inc()

    def personal_data(self, endpoint: str, found: dict[str, int]) -> None:
        """Entities redacted from the texts of one request to `endpoint` (classify, feedback)."""
        for entity, count in found.items():
            self.m["personal"].labels(self.project, entity, endpoint).inc(count)

    def synced(self, unix_time: float) -> None:
        """A registry read succeeded at `unix_time` (the follower's on_sync)."""
        self.m["synced"].labels(self.project).set(unix_time)

    def model_loaded(self, nbytes: int) -> None:
        """A version of this project was loaded (`nbytes` of weights)."""
        self.m["loads"].labels(self.project).inc()

    def model_evicted(self, nbytes: int) -> None:
        """This project's models were dropped to keep the worker under its memory budget."""
        self.m["evictions"].labels(self.project).inc()
