"""One project inside the service: its follower, batcher, breaker, feedback desk and metrics.

The service (bento.py) holds one `ProjectServer` per project it hosts and routes
`/v1/<project>/classify|feedback|status` to it (`/classify` and `/feedback` to the default
project). Nothing is shared between two projects but the process: each reads its own registered
model's aliases and canary weight, batches its own items, opens its own breaker, lands feedback in
its own landing folder, and labels its metrics with its name, so two canaries in two projects run
and are judged apart. Request ids are signed with a key derived per project, so an id issued by
one project is refused as feedback by another.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from tuneloop.config import DEFAULT_PROJECT, Settings, mask_secrets
from tuneloop.serve import http
from tuneloop.serve.batching import ItemBatcher, Overloaded
from tuneloop.serve.breaker import CircuitBreaker
from tuneloop.serve.feedback import ClaimBook, FeedbackDesk, FeedbackRefused
from tuneloop.serve.follower import Follower
from tuneloop.serve.freshness import canary_hold
from tuneloop.serve.limits import Limits, classify_problem
from tuneloop.serve.metrics import PrometheusObserver
from tuneloop.serve.routing import item_key
from tuneloop.serve.scoring import Fault, Item, NotReady, score_items
from tuneloop.serve.settings import ServeSettings
from tuneloop.serve.tokens import RequestRecord, sign_request, text_digest
from tuneloop.steps.privacy import redactor_for

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


def project_secret(secret: bytes, project: str) -> bytes:
    """The key that signs `project`'s request ids: the service's own for the default project (ids
    issued before projects existed still verify), one derived by HMAC for every other."""
    if project == DEFAULT_PROJECT:
        return secret
    return hmac.new(secret, f"tuneloop-project:{project}".encode(), hashlib.sha256).digest()


class ProjectServer:
    """Everything the service does for one project (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        serve: ServeSettings,
        source: Any,
        secret: bytes,
        serve_home: Path,
        lazy: bool = False,
    ) -> None:
        self.name = settings.project
        self.settings, self.serve = settings, serve
        self.observer = PrometheusObserver(project=self.name)
        # Personal data is replaced before a text reaches the model, a digest, a log or the landing
        # folder: the same redactor as ingest, so the model sees the placeholders it learnt on.
        self.redactor = redactor_for(settings)
        self.follower = Follower(
            source,
            poll_s=serve.poll_s,
            retain_s=serve.retain_s,
            retry_failed_s=serve.retry_failed_s,
            load_timeout_s=serve.load_timeout_s,
            on_sync=self.observer.synced,
            lazy=lazy,
            on_loaded=self._loaded,
        )
        self.on_loaded: Any = None  # set by the service: the memory pool's check after a load
        self.secret = project_secret(secret, self.name)
        claims = serve.feedback_claims_dir or serve_home / "feedback-claims"
        if self.name != DEFAULT_PROJECT:
            claims = claims.with_name(f"{claims.name}-{self.name}")
        self.limits = Limits(serve.max_texts, serve.max_chars, serve.max_key_chars)
        self.breaker = CircuitBreaker(serve.breaker_failures, serve.breaker_cooldown_s)
        self.desk = FeedbackDesk(
            secret=self.secret,
            max_age_s=serve.feedback_max_age_s,
            label_pattern=settings.label_pattern,
            max_chars=serve.max_chars,
            claims=ClaimBook(claims, serve.feedback_max_age_s),
            landing=settings.landing_dir,
            observer=self.observer,
            redact=self._redact_feedback,
        )
        faulty = serve.fault_version if serve.fault_project == self.name else None
        self.fault = Fault(faulty, serve.fault_error_rate, serve.fault_latency_ms)
        self.batcher = ItemBatcher(self._score, serve.max_batch_size, serve.max_latency_ms)

    def _loaded(self, model: Any) -> None:
        self.observer.model_loaded(model.nbytes)
        if self.on_loaded is not None:
            self.on_loaded(self.name)

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

    def canary_hold(self) -> str | None:
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
            canary_open=self.canary_hold() is None,
        )

    async def classify(self, texts: list[str], key: str | None) -> Any:
        """A ClassifyResponse, or an error response (400 bad input, 503 not ready or overloaded)."""
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
            log.error("tuneloop serve: %s/classify failed: %s", self.name, message)
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

    async def feedback(
        self, request_id: str, label: str, index: int, text: str | None, tenant: str | None = None
    ) -> Any:
        """A FeedbackResponse, or the error response of a refused feedback (400, 409)."""
        try:
            taken = await self.desk.take(request_id, index, label, text, tenant=tenant)
        except FeedbackRefused as exc:
            return http.error_response(exc.status, str(exc))
        return FeedbackResponse(
            model_version=taken.model_version,
            predicted=taken.predicted,
            label=taken.label,
            correct=taken.correct,
            landed=taken.landed,
        )

    def status(self) -> dict[str, Any]:
        """What this project serves in this worker and when it last synced with the registry."""
        status = self.follower.status()
        hold = self.canary_hold()
        if hold is not None:
            status["canary_weight"] = 0.0
        return {
            **status,
            "project": self.name,
            "canary_hold": hold,
            "max_sync_age_s": self.serve.max_sync_age_s,
            "breaker": self.breaker.state,
            "model": self.settings.model_name,
        }
