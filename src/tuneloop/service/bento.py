"""The BentoML service: `bentoml serve tuneloop.service:TuneloopService` (or `tuneloop serve`).

Each worker process builds its own registry follower (BentoML workers are processes and share
nothing), so every worker serves what the registry says within one poll interval. The follower reads
the registry through `RegistrySource` (steps/serve.py, the composition root); everything else is a
mechanism of the serve stage.

    POST /classify  {"texts": [...], "key": optional sticky key} -> request_id, predictions
                    (personal data in a text is replaced by placeholders before the model sees it)
    POST /feedback  {"request_id", "index": 0, "label", "text": optional} -> counted (and landed),
                    once per (request, item); `text` must be the text that item classified
    GET  /status    versions per alias, backends, canary weight, last sync, its age and its error
    /livez /readyz (503 until a champion is loaded and warmed) /metrics, OpenAPI at /docs

Bearer tokens (serve/middleware.py): TUNELOOP_API_TOKEN opens every path; TUNELOOP_METRICS_TOKEN
only /metrics and /status, TUNELOOP_CLASSIFY_TOKEN /classify and /docs.json, TUNELOOP_FEEDBACK_TOKEN
/feedback. /status's "auth" names the variables set and their scopes. With none set every endpoint
answers anyone who reaches the port: the service logs a warning and /status says `"auth": "off"`;
`tuneloop serve` refuses a non-loopback address then, unless told `--insecure`.
"""

from __future__ import annotations

import importlib
import logging
import time
import uuid
from typing import Any

import bentoml
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from tuneloop.config import load_settings, mask_secrets
from tuneloop.serve import http
from tuneloop.serve.backends import threads_per_session
from tuneloop.serve.batching import ItemBatcher, Overloaded
from tuneloop.serve.breaker import CircuitBreaker
from tuneloop.serve.feedback import ClaimBook, FeedbackDesk, FeedbackRefused
from tuneloop.serve.follower import Follower
from tuneloop.serve.freshness import canary_hold
from tuneloop.serve.limits import Limits, classify_problem
from tuneloop.serve.metrics import PrometheusObserver
from tuneloop.serve.middleware import configured_tokens
from tuneloop.serve.routing import item_key
from tuneloop.serve.scopes import describe_auth, unopened_paths
from tuneloop.serve.scoring import Fault, Item, NotReady, score_items
from tuneloop.serve.settings import load_serve_settings
from tuneloop.serve.tokens import RequestRecord, load_or_create_secret, sign_request, text_digest
from tuneloop.steps.privacy import redactor_for
from tuneloop.steps.serve import RegistrySource

SERVE = load_serve_settings()  # read once per process: the worker count shapes the class below
log = logging.getLogger("tuneloop.serve")


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
        tokens = configured_tokens()
        self.auth = describe_auth(tokens)
        if not tokens:
            log.warning(
                "tuneloop serve: no bearer token is set (TUNELOOP_API_TOKEN, TUNELOOP_METRICS_TOKEN, "
                "TUNELOOP_CLASSIFY_TOKEN, TUNELOOP_FEEDBACK_TOKEN): /classify, /feedback, /status "
                "and /metrics answer anyone who can reach this port"
            )
        else:
            log.info("tuneloop serve: auth %s", self.auth)
            closed = unopened_paths(tokens)
            if closed:
                log.warning("tuneloop serve: no configured token opens %s", ", ".join(closed))
        # Personal data is replaced before a text reaches the model, a digest, a log or the landing
        # folder: the same redactor as ingest, so the model sees the placeholders it learnt on.
        self.redactor = redactor_for(self.settings)
        threads = self.serve.threads or threads_per_session(self.serve.workers)
        source = build_source(self.settings, self.serve, threads)
        self.observer = PrometheusObserver()
        self.follower = Follower(
            source,
            poll_s=self.serve.poll_s,
            retain_s=self.serve.retain_s,
            retry_failed_s=self.serve.retry_failed_s,
            load_timeout_s=self.serve.load_timeout_s,
            on_sync=self.observer.synced,
        )
        home = self.settings.home_dir / "serve"
        cache = self.serve.cache_dir or home
        self.secret = (
            self.serve.secret.encode() if self.serve.secret else load_or_create_secret(cache / "secret")
        )
        self.limits = Limits(self.serve.max_texts, self.serve.max_chars, self.serve.max_key_chars)
        self.breaker = CircuitBreaker(self.serve.breaker_failures, self.serve.breaker_cooldown_s)
        self.desk = FeedbackDesk(
            secret=self.secret,
            max_age_s=self.serve.feedback_max_age_s,
            label_pattern=self.settings.label_pattern,
            max_chars=self.serve.max_chars,
            claims=ClaimBook(
                self.serve.feedback_claims_dir or home / "feedback-claims", self.serve.feedback_max_age_s
            ),
            landing=self.settings.landing_dir,
            observer=self.observer,
            redact=self._redact_feedback,
        )
        self.fault = Fault(self.serve.fault_version, self.serve.fault_error_rate, self.serve.fault_latency_ms)
        self.batcher = ItemBatcher(self._score, self.serve.max_batch_size, self.serve.max_latency_ms)
        self.follower.start()

    async def _redact(self, texts: list[str]) -> list[str]:
        """The texts with personal data replaced; Presidio runs off the event loop, and only when a
        text may hold an entity (a digit or an '@'), so most requests cost a regex scan."""
        if not any(self.redactor.may_hold(t) for t in texts):
            return texts
        done = await run_in_threadpool(lambda: [self.redactor.redact(t) for t in texts])
        found: dict[str, int] = {}
        for item in done:
            for entity, n in item.found.items():
                found[entity] = found.get(entity, 0) + n
        self.observer.personal_data("classify", found)
        return [item.text for item in done]

    def _redact_feedback(self, text: str) -> str:
        done = self.redactor.redact(text)
        self.observer.personal_data("feedback", done.found)
        return done.text

    def __is_ready__(self) -> bool:
        return self.follower.bundle.champion is not None

    def _canary_hold(self) -> str | None:
        return canary_hold(self.follower.sync_age(), self.serve.max_sync_age_s)

    def _score(self, items: list[Item]) -> list[dict[str, Any]]:
        return score_items(
            self.follower.bundle,  # read once: the whole batch uses this bundle
            items,
            breaker=self.breaker,
            observer=self.observer,
            top_k=self.serve.top_k,
            shadow_share=self.serve.shadow_share,
            fault=self.fault,
            canary_open=self._canary_hold() is None,
        )

    @bentoml.api(route="/classify")
    async def classify(self, texts: list[str], key: str | None = None) -> ClassifyResponse:
        """Classify texts; `key` pins a caller to one side of a canary (same key, same version)."""
        problem = classify_problem(texts, key, self.limits)
        if problem:
            return http.error_response(400, problem)
        texts = await self._redact(texts)
        nonce = uuid.uuid4().hex
        items = [Item(text, item_key(key, nonce, i)) for i, text in enumerate(texts)]
        try:
            predictions = await self.batcher.submit(items)
        except NotReady as exc:
            return http.error_response(503, f"{exc}; retry when /readyz answers 200")
        except Overloaded as exc:
            return http.error_response(503, str(exc))
        except Exception as exc:  # the model failed on this request's items (the batcher isolates them)
            message = mask_secrets(f"{type(exc).__name__}: {exc}")
            log.error("tuneloop serve: /classify failed: %s", message)
            return http.error_response(500, f"the model failed on these texts: {message}")
        record = RequestRecord(
            nonce,
            time.time(),
            tuple((p["model_version"], p["label"]) for p in predictions),
            tuple(text_digest(self.secret, text) for text in texts),
        )
        return ClassifyResponse(
            request_id=sign_request(self.secret, record),
            predictions=[Prediction(**p) for p in predictions],
        )

    @bentoml.api(route="/feedback")
    async def feedback(
        self, request_id: str, label: str, index: int = 0, text: str | None = None
    ) -> FeedbackResponse:
        """Say what the right label was for item `index` of a request, once; with `text` (exactly the
        text that item classified), land it for training."""
        try:
            taken = await self.desk.take(request_id, index, label, text)
        except FeedbackRefused as exc:
            return http.error_response(exc.status, str(exc))
        return FeedbackResponse(
            model_version=taken.model_version,
            predicted=taken.predicted,
            label=taken.label,
            correct=taken.correct,
            landed=taken.landed,
        )

    @http.app.get("/status")
    def status(self) -> dict[str, Any]:
        """What this worker serves and when it last synced with the registry."""
        status = self.follower.status()
        hold = self._canary_hold()
        if hold is not None:
            status["canary_weight"] = 0.0
        return {
            **status,
            "canary_hold": hold,
            "max_sync_age_s": self.serve.max_sync_age_s,
            "breaker": self.breaker.state,
            "auth": self.auth,
            "model": self.settings.model_name,
        }


# What the handlers answer beyond BentoML's documented 200, 400, 404 and 500.
EXTRA_STATUSES = {
    "/classify": {503: "No champion is loaded yet, or the worker is overloaded: retry shortly."},
    "/feedback": {409: "Feedback on this item of this request was given already: it is taken once."},
}
http.attach_middleware(TuneloopService, EXTRA_STATUSES)
