"""The BentoML service: `bentoml serve tuneloop.service:TuneloopService` (or `tuneloop serve`).

Each worker process builds its own registry follower (BentoML workers are processes and share
nothing), so every worker serves what the registry says within one poll interval. The follower reads
the registry through `RegistrySource` (steps/serve.py, the composition root); everything else is a
mechanism of the serve stage.

    POST /classify  {"texts": [...], "key": optional sticky key} -> request_id, predictions
    POST /feedback  {"request_id", "index": 0, "label", "text": optional} -> counted (and landed)
    GET  /status    versions per alias, backends, canary weight, last sync and its error
    /livez /readyz (503 until a champion is loaded and warmed) /metrics, OpenAPI at /docs
"""

from __future__ import annotations

import importlib
import time
import uuid
from typing import Any

import bentoml
from pydantic import BaseModel, Field

from tuneloop.config import load_settings
from tuneloop.serve import http
from tuneloop.serve.backends import threads_per_session
from tuneloop.serve.batching import ItemBatcher, Overloaded
from tuneloop.serve.breaker import CircuitBreaker
from tuneloop.serve.feedback import write_feedback_row
from tuneloop.serve.follower import Follower
from tuneloop.serve.limits import Limits, classify_problem, feedback_problem
from tuneloop.serve.metrics import PrometheusObserver
from tuneloop.serve.routing import item_key
from tuneloop.serve.scoring import Fault, Item, NotReady, score_items
from tuneloop.serve.settings import load_serve_settings
from tuneloop.serve.tokens import (
    BadRequestId,
    RequestRecord,
    load_or_create_secret,
    sign_request,
    verify_request,
)
from tuneloop.steps.serve import RegistrySource

SERVE = load_serve_settings()  # read once per process: the worker count shapes the class below


class Scored(BaseModel):
    label: str
    score: float


class Prediction(Scored):
    top_k: list[Scored]
    model_version: str


class ClassifyResponse(BaseModel):
    request_id: str = Field(description="Signed; send it back with /feedback.")
    predictions: list[Prediction]


class FeedbackResponse(BaseModel):
    model_version: str
    predicted: str
    label: str
    correct: bool
    landed: bool = Field(description="Whether the labelled text was written to the landing folder.")


def build_source(settings: Any, serve: Any, threads: int) -> Any:
    """The follower's Source: the MLflow registry, or a stand-in named by TUNELOOP_SERVE_RUNTIME.

    The stand-in is for benchmarks/serve.py, which serves a local folder through the same request
    path without a registry; production never sets it.
    """
    if serve.runtime:
        module, _, name = serve.runtime.partition(":")
        return getattr(importlib.import_module(module), name)(settings, serve, threads)
    return RegistrySource(settings, serve, threads)


@bentoml.service(name="tuneloop", workers=SERVE.workers, traffic={"timeout": 60})
@bentoml.asgi_app(http.app, path="/")
class TuneloopService:
    """Serves `champion` and, for a share of items, `canary`, as the MLflow registry says."""

    def __init__(self) -> None:
        self.settings = load_settings()
        self.serve = load_serve_settings()
        threads = self.serve.threads or threads_per_session(self.serve.workers)
        source = build_source(self.settings, self.serve, threads)
        self.follower = Follower(
            source,
            poll_s=self.serve.poll_s,
            retain_s=self.serve.retain_s,
            retry_failed_s=self.serve.retry_failed_s,
        )
        cache = self.serve.cache_dir or self.settings.home_dir / "serve"
        self.secret = (
            self.serve.secret.encode() if self.serve.secret else load_or_create_secret(cache / "secret")
        )
        self.limits = Limits(self.serve.max_texts, self.serve.max_chars, self.serve.max_key_chars)
        self.breaker = CircuitBreaker(self.serve.breaker_failures, self.serve.breaker_cooldown_s)
        self.observer = PrometheusObserver()
        self.fault = Fault(self.serve.fault_version, self.serve.fault_error_rate, self.serve.fault_latency_ms)
        self.batcher = ItemBatcher(self._score, self.serve.max_batch_size, self.serve.max_latency_ms)
        self.follower.start()

    def __is_ready__(self) -> bool:
        return self.follower.bundle.champion is not None

    def _score(self, items: list[Item]) -> list[dict[str, Any]]:
        return score_items(
            self.follower.bundle,  # read once: the whole batch uses this bundle
            items,
            breaker=self.breaker,
            observer=self.observer,
            top_k=self.serve.top_k,
            shadow_share=self.serve.shadow_share,
            fault=self.fault,
        )

    @bentoml.api(route="/classify")
    async def classify(self, texts: list[str], key: str | None = None) -> ClassifyResponse:
        """Classify texts; `key` pins a caller to one side of a canary (same key, same version)."""
        problem = classify_problem(texts, key, self.limits)
        if problem:
            return http.error_response(400, problem)
        nonce = uuid.uuid4().hex
        items = [Item(text, item_key(key, nonce, i)) for i, text in enumerate(texts)]
        try:
            predictions = await self.batcher.submit(items)
        except NotReady as exc:
            return http.error_response(503, f"{exc}; retry when /readyz answers 200")
        except Overloaded as exc:
            return http.error_response(503, str(exc))
        record = RequestRecord(
            nonce, time.time(), tuple((p["model_version"], p["label"]) for p in predictions)
        )
        return ClassifyResponse(
            request_id=sign_request(self.secret, record),
            predictions=[Prediction(**p) for p in predictions],
        )

    @bentoml.api(route="/feedback")
    async def feedback(
        self, request_id: str, label: str, index: int = 0, text: str | None = None
    ) -> FeedbackResponse:
        """Say what the right label was for item `index` of a request; with `text`, land it for training."""
        try:
            record = verify_request(self.secret, request_id, self.serve.feedback_max_age_s)
        except BadRequestId as exc:
            return http.error_response(400, str(exc))
        if not 0 <= index < len(record.items):
            return http.error_response(
                400, f"index {index} is out of range: that request had {len(record.items)} texts"
            )
        problem = feedback_problem(label, text, self.settings.label_pattern, self.serve.max_chars)
        if problem:
            return http.error_response(400, problem)
        version, predicted = record.items[index]
        correct = predicted == label
        self.observer.feedback(version, correct)
        if text is not None:
            row = {"text": text, "label": label, "model_version": version, "predicted": predicted}
            write_feedback_row(self.settings.landing_dir, row)
        return FeedbackResponse(
            model_version=version, predicted=predicted, label=label, correct=correct, landed=text is not None
        )

    @http.app.get("/status")
    def status(self) -> dict[str, Any]:
        """What this worker serves and when it last synced with the registry."""
        return {
            **self.follower.status(),
            "breaker": self.breaker.state,
            "model": self.settings.model_name,
        }


http.attach_middleware(TuneloopService)
