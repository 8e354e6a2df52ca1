"""What the service can be told: `TUNELOOP_SERVE_*` variables (or keyword arguments in tests).

Kept apart from `tuneloop.config.Settings` (which says where the registry and the landing folder
are) because only the service reads these, and each worker process reads them on start.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Best first: a TensorRT engine (GPU), ONNX Runtime INT8, ONNX Runtime fp32, the PyTorch merged model.
DEFAULT_BACKENDS = "tensorrt,onnx-int8,onnx-fp32,torch"


class ServeSettings(BaseSettings):
    """Serving knobs; each maps to `TUNELOOP_SERVE_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_SERVE_", extra="ignore", frozen=True)

    workers: int = Field(1, ge=1, description="Worker processes (each follows the registry on its own).")
    backends: str = Field(DEFAULT_BACKENDS, description="Backends to try, best first, comma-separated.")
    threads: int = Field(
        0, ge=0, description="Intra-op threads per model session; 0: cores // workers (at least 1)."
    )
    # Measured with one worker on the 2-core EPYC, INT8, loopback client (benchmarks/README.md):
    # spinning on, the model call took 1.85 ms on average at concurrency 1 against 2.65 ms off
    # (a parked worker is woken for each parallel op of ~700), served p50 3.3 vs 5.2 ms.
    ort_spinning: bool = Field(
        True,
        description="Let ONNX Runtime's idle worker threads spin briefly between ops (its default). "
        "Turn off when many workers or loaded versions share few cores.",
    )
    poll_s: float = Field(5.0, gt=0, description="Seconds between registry polls in each worker.")
    retry_failed_s: float = Field(
        60.0, ge=0, description="A version that failed to load is tried again after this many seconds."
    )
    retain_s: float = Field(
        900.0, ge=0, description="Seconds the old champion stays loaded after a promotion (rollback)."
    )
    # 12 polls at the default 5 s: a registry restart or a slow read does not trip it. A rollback is
    # written to the registry (canary_weight 0 first), so a worker that has not read it for a minute
    # may be serving a canary its controller withdrew: past this, the champion answers every item.
    max_sync_age_s: float = Field(
        60.0,
        gt=0,
        description="Seconds without a successful registry read after which the canary gets no traffic "
        "(the champion answers every item until a read succeeds; /status says why).",
    )
    # MiniLM's merged model (~90 MB) and INT8 graph (~23 MB) download, verify, load and warm in ~10 s
    # on 2 cores; 300 s leaves room for a 440 MB BERT-base at 2 MB/s (220 s). A load still running
    # then is given up (the version counts as failed, retried after retry_failed_s).
    load_timeout_s: float = Field(
        300.0, gt=0, description="Seconds one version may take to download, verify, load and warm."
    )
    # MLflow's own defaults are 120 s per HTTP request and 7 retries with backoff: one read of an
    # unresponsive server could hold the poll for over 15 minutes. 15 s x (1 + 2 retries) plus
    # MLflow's backoff between them (0 s then 2 x 2 = 4 s, each + up to 1 s jitter) is at most 51 s,
    # under max_sync_age_s.
    registry_timeout_s: int = Field(
        15,
        ge=1,
        description="Seconds per HTTP request to an MLflow server (sets MLFLOW_HTTP_REQUEST_TIMEOUT in the "
        "service unless that is set).",
    )
    registry_retries: int = Field(
        2,
        ge=0,
        description="Retries of a failed MLflow HTTP request (sets MLFLOW_HTTP_REQUEST_MAX_RETRIES in the "
        "service unless that is set).",
    )
    secret: str | None = Field(
        None,
        description="HMAC key for request ids; default: a random key kept in <home>/serve/secret, "
        "shared by every worker on this host (set it for several hosts).",
    )
    feedback_max_age_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Feedback on a request older than this is refused."
    )
    feedback_claims_dir: Path | None = Field(
        None,
        description="Where each (request, item) given feedback is recorded, so it is taken once; "
        "default <home>/serve/feedback-claims. Replicas that share it share the once-only rule.",
    )
    max_texts: int = Field(64, ge=1, description="Texts per /classify request.")
    max_chars: int = Field(2000, ge=1, description="Characters per text.")
    max_key_chars: int = Field(256, ge=1, description="Characters of a sticky routing key.")
    max_tokens: int = Field(128, ge=8, description="Tokens per text (longer is truncated).")
    max_batch_size: int = Field(64, ge=1, description="Items per model call (adaptive batching).")
    max_latency_ms: int = Field(
        3000, ge=1, description="Longest an item may queue before the batcher answers 503."
    )
    top_k: int = Field(3, ge=1, description="Labels listed per prediction.")
    shadow_share: float = Field(
        0.1, ge=0, le=1, description="Share of canary items the champion also scores (agreement)."
    )
    breaker_failures: int = Field(5, ge=1, description="Canary errors in a row that open the breaker.")
    breaker_cooldown_s: float = Field(30.0, gt=0, description="Seconds the breaker stays open.")
    cache_dir: Path | None = Field(None, description="Scratch for downloads; default <home>/serve.")
    # The fault switch: rehearse a rollback (tests, `make demo`) with a canary that fails or is slow
    # on purpose. Applies to the one version named and only to its model calls; off by default.
    fault_version: str | None = Field(
        None, description="Version whose model calls get the faults below (testing rollbacks)."
    )
    fault_project: str = Field(
        "default",
        description="Project whose version fault_version names (versions of projects share numbers).",
    )
    fault_error_rate: float = Field(
        0.0, ge=0, le=1, description="Share of that version's model calls that raise."
    )
    fault_latency_ms: float = Field(0.0, ge=0, description="Delay added to each of that version's calls.")
    # --- many projects in one service (serve/pool.py) ------------------------------------------
    projects: str = Field(
        "",
        description="Projects this service hosts, comma-separated; empty: every declared project "
        "(`tuneloop project list`) and the default one.",
    )
    memory_mb: float = Field(
        0.0,
        ge=0,
        description="Weight megabytes the loaded models may hold in each worker; past it the project "
        "asked for least recently is evicted and loads again on its next request. 0: no budget, "
        "every project loads at start.",
    )
    pinned: str = Field(
        "*",
        description="Projects whose models load at start and are never evicted, comma-separated; "
        "'*': every project (then only the budget's report changes).",
    )
    cold_wait_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a request for an evicted or not yet loaded project waits for its model "
        "before a 503 with Retry-After.",
    )
    runtime: str | None = Field(
        None,
        description="module:function building a stand-in for the registry source (benchmarks/serve.py); "
        "unset: the MLflow registry.",
    )

    def pinned_projects(self, hosted: list[str]) -> frozenset[str]:
        """The hosted projects that are pinned."""
        if self.pinned.strip() == "*":
            return frozenset(hosted)
        return frozenset(p.strip() for p in self.pinned.split(",") if p.strip()) & frozenset(hosted)

    @model_validator(mode="after")
    def _sync_age_spans_a_poll(self) -> ServeSettings:
        if self.max_sync_age_s <= self.poll_s:
            raise ValueError(
                f"max_sync_age_s ({self.max_sync_age_s}) must be longer than poll_s ({self.poll_s}): "
                "every worker is poll_s old between two reads"
            )
        return self


def load_serve_settings(**overrides: object) -> ServeSettings:
    """Serving settings from the environment, with keyword overrides on top."""
    return ServeSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
