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
    POST /v1/<project>/classify, /v1/<project>/feedback, GET /v1/<project>/status: the same for
                    each project hosted (`/classify` and `/feedback` are the default project's)
    /livez /readyz (503 until the pinned projects' champions are loaded and warmed) /metrics,
    OpenAPI at /docs

Many projects (service/project.py): one ProjectServer each, with its own follower, batcher,
breaker, feedback desk and metrics label; a memory pool (serve/pool.py) loads unpinned projects on
demand and evicts the least recently used under TUNELOOP_SERVE_MEMORY_MB.

Bearer tokens (serve/middleware.py): TUNELOOP_API_TOKEN opens every path; TUNELOOP_METRICS_TOKEN
only /metrics and /status, TUNELOOP_CLASSIFY_TOKEN /classify and /docs.json, TUNELOOP_FEEDBACK_TOKEN
/feedback. /status's "auth" names the variables set and their scopes. With none set every endpoint
answers anyone who reaches the port: the service logs a warning and /status says `"auth": "off"`;
`tuneloop serve` refuses a non-loopback address then, unless told `--insecure`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import bentoml
from fastapi import Request
from pydantic import BaseModel

from tuneloop.config import DEFAULT_PROJECT, load_settings
from tuneloop.projects import project_names
from tuneloop.serve import http
from tuneloop.serve.backends import threads_per_session
from tuneloop.serve.middleware import configured_tokens
from tuneloop.serve.pool import ModelPool
from tuneloop.serve.scopes import describe_auth, unopened_paths
from tuneloop.serve.settings import ServeSettings, load_serve_settings
from tuneloop.serve.tenant_gate import TenantGate
from tuneloop.serve.tenants import tenant_of, tenants_path, texts_refusal
from tuneloop.serve.tokens import load_or_create_secret
from tuneloop.service.project import ClassifyResponse, FeedbackResponse, ProjectServer
from tuneloop.steps.serve import RegistrySource


def hosted_projects(serve: ServeSettings) -> list[str]:
    """The projects this service hosts: TUNELOOP_SERVE_PROJECTS, else every declared one."""
    declared = project_names(load_settings(project=DEFAULT_PROJECT))
    if not serve.projects.strip():
        return declared
    wanted = [p.strip() for p in serve.projects.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in declared]
    if unknown:
        raise ValueError(
            f"TUNELOOP_SERVE_PROJECTS names {', '.join(unknown)}, which are not declared "
            f"(declared: {', '.join(declared)}); `tuneloop project list` shows them"
        )
    return wanted


SERVE = load_serve_settings()  # read once per process: the worker count shapes the class below
HOSTED = hosted_projects(SERVE)  # and the routes the middleware guards as JSON endpoints
log = logging.getLogger("tuneloop.serve")


class ClassifyRequest(BaseModel):
    texts: list[str]
    key: str | None = None


class FeedbackRequest(BaseModel):
    request_id: str
    label: str
    index: int = 0
    text: str | None = None


def _answers(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a /v1 route: each status with what it means and the error body."""
    return {status: {"description": V1_STATUSES[status], "model": ErrorBody} for status in statuses}


class ErrorBody(BaseModel):
    error: str


V1_STATUSES = {
    400: "The body is not what the route takes (the error names the field), or a text breaks a limit.",
    401: "No bearer token, or one that is not a tenant's or a configured variable's.",
    403: "The token's tenant may not call this project, or the token lacks the path's scope.",
    404: "No such project is served here.",
    409: "Feedback on this item of this request was given already: it is taken once.",
    413: "The body is too large, or holds more texts than the tenant may send at once.",
    415: "The body is not JSON (send Content-Type: application/json).",
    429: "The tenant is over its requests per second: retry after Retry-After seconds.",
    500: "The model failed on these texts.",
    503: "The project's model is not loaded yet, or the worker is overloaded: retry shortly.",
}


def build_source(settings: Any, serve: Any, threads: int) -> Any:
    """The follower's Source: the MLflow registry, or a stand-in named by TUNELOOP_SERVE_RUNTIME.

    The stand-in is for benchmarks/serve.py, which serves a local folder through the same request
    path without a registry; production never sets it.
    """
    if serve.runtime:
        module, _, name = serve.runtime.partition(":")
        return getattr(importlib.import_module(module), name)(settings, serve, threads)
    return RegistrySource(settings, serve, threads)


def _tenant(request: Any) -> str | None:
    """The tenant the middleware admitted this request for (None: an env token, or auth off)."""
    grant = tenant_of(request.scope)
    return grant.id if grant is not None else None


def _keep_status(ctx: Any, answer: Any) -> Any:
    """`answer`, with its status kept: BentoML sets the status of a response returned by an API that
    takes a Context from `ctx.response`, 200 unless told."""
    status = getattr(answer, "status_code", None)
    if status is not None:
        ctx.response.status_code = status
    return answer


@bentoml.service(name="tuneloop", workers=SERVE.workers, traffic={"timeout": 60})
@bentoml.asgi_app(http.app, path="/")
class TuneloopService:
    """Serves each project's `champion` and, for a share of items, its `canary`, as the MLflow
    registry says."""

    def __init__(self) -> None:
        self.settings = load_settings(project=DEFAULT_PROJECT)
        self.serve = load_serve_settings()
        tokens = configured_tokens()
        tenants = TenantGate(tenants_path(self.settings.home_dir))
        said = [describe_auth(tokens)] if tokens else []
        if tenants.active():  # the file exists: auth is on even with no tenant in it yet
            said.append("tenants: " + tenants.describe())
        self.auth = "; ".join(said) or "off"
        if not tokens and not tenants.active():
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
        threads = self.serve.threads or threads_per_session(self.serve.workers)
        home = self.settings.home_dir / "serve"
        cache = self.serve.cache_dir or home
        secret = self.serve.secret.encode() if self.serve.secret else load_or_create_secret(cache / "secret")
        budget = int(self.serve.memory_mb * 1e6)
        pinned = self.serve.pinned_projects(HOSTED)
        self.servers: dict[str, ProjectServer] = {}
        for name in HOSTED:
            settings = load_settings(project=name)
            source = build_source(settings, self.serve, threads)
            lazy = budget > 0 and name not in pinned
            self.servers[name] = ProjectServer(settings, self.serve, source, secret, home, lazy=lazy)
        self.pool = ModelPool(
            {name: server.follower for name, server in self.servers.items()},
            budget,
            pinned,
            on_evict=lambda name, freed: self.servers[name].observer.model_evicted(freed),
        )
        for server in self.servers.values():
            server.on_loaded = lambda project: self.pool.enforce(spare=project)
            server.follower.start()

    def __is_ready__(self) -> bool:
        """Every pinned project's champion is loaded and warmed (a project whose registered model
        names no champion has nothing to wait for), and at least one champion answers."""
        pinned = [s for name, s in self.servers.items() if name in self.pool.pinned]
        if not pinned:  # every project loads on demand: ready once each one's registry was read
            return all(s.follower.sync_age() is not None for s in self.servers.values())
        answering = any(s.follower.bundle.champion is not None for s in self.servers.values())
        return answering and all(s.follower.settled() for s in pinned)

    async def _server(self, project: str) -> Any:
        """The project's server with its model at hand, or the error response saying why not."""
        server = self.servers.get(project)
        if server is None:
            return None, http.error_response(
                404, f"project {project!r} is not served here (served: {', '.join(self.servers)})"
            )
        if project not in self.pool.pinned and not await self.pool.ready(project, self.serve.cold_wait_s):
            return None, http.error_response(
                503,
                f"project {project}'s model is still loading after {self.serve.cold_wait_s:.0f} s; retry",
                {"retry-after": "5"},
            )
        return server, None

    async def _classify(self, project: str, texts: list[str], key: str | None, request: Any) -> Any:
        server, refused = await self._server(project)
        if refused is not None:
            return refused
        too_many = texts_refusal(request.scope, len(texts))  # the tenant's texts-per-request quota
        if too_many is not None:
            return http.error_response(*too_many)
        return await server.classify(texts, key)

    async def _feedback(
        self, project: str, request_id: str, label: str, index: int, text: str | None, request: Any
    ) -> Any:
        server = self.servers.get(project)
        if server is None:
            return http.error_response(404, f"project {project!r} is not served here")
        return await server.feedback(request_id, label, index, text, _tenant(request))

    @bentoml.api(route="/classify")
    async def classify(
        self, ctx: bentoml.Context, texts: list[str], key: str | None = None
    ) -> ClassifyResponse:
        """Classify texts with the default project's model; `key` pins a caller to one side of a
        canary (same key, same version). Other projects: POST /v1/<project>/classify."""
        return _keep_status(ctx, await self._classify(DEFAULT_PROJECT, texts, key, ctx.request))

    @bentoml.api(route="/feedback")
    async def feedback(
        self, ctx: bentoml.Context, request_id: str, label: str, index: int = 0, text: str | None = None
    ) -> FeedbackResponse:
        """Say what the right label was for item `index` of a request, once; with `text` (exactly the
        text that item classified), land it for training."""
        return _keep_status(
            ctx, await self._feedback(DEFAULT_PROJECT, request_id, label, index, text, ctx.request)
        )

    @http.app.post(
        "/v1/{project}/classify",
        response_model=ClassifyResponse,
        responses=_answers(400, 401, 403, 404, 413, 415, 429, 500, 503),
    )
    async def classify_project(self, project: str, body: ClassifyRequest, request: Request) -> Any:
        """Classify texts with `project`'s model (a tenant token allowed on it)."""
        return await self._classify(project, body.texts, body.key, request)

    @http.app.post(
        "/v1/{project}/feedback",
        response_model=FeedbackResponse,
        responses=_answers(400, 401, 403, 404, 409, 413, 415, 429),
    )
    async def feedback_project(self, project: str, body: FeedbackRequest, request: Request) -> Any:
        """Feedback on an answer of `project` (the tenant is credited in the landed row)."""
        return await self._feedback(project, body.request_id, body.label, body.index, body.text, request)

    @http.app.get("/v1/{project}/status", responses=_answers(401, 403, 404))
    def project_status(self, project: str) -> Any:
        """What this worker serves for `project`."""
        server = self.servers.get(project)
        if server is None:
            return http.error_response(404, f"project {project!r} is not served here")
        return {**server.status(), "memory": self.pool.describe(), "auth": self.auth}

    @http.app.get("/status")
    def status(self) -> dict[str, Any]:
        """The default project's status (as before projects), each project's summary, the memory."""
        default = self.servers.get(DEFAULT_PROJECT)
        summary = {
            name: {
                "ready": s.follower.bundle.champion is not None,
                "champion": s.follower.bundle.champion and s.follower.bundle.champion.version,
                "canary": s.follower.bundle.canary and s.follower.bundle.canary.version,
                "canary_weight": s.follower.bundle.effective_weight,
                "dormant": s.follower.dormant,
                "model": s.settings.model_name,
            }
            for name, s in self.servers.items()
        }
        base = default.status() if default is not None else {"ready": False}
        return {**base, "auth": self.auth, "projects": summary, "memory": self.pool.describe()}


def _project_routes(kind: str) -> list[str]:
    return [f"/v1/{name}/{kind}" for name in HOSTED]


# What the handlers answer beyond BentoML's documented 200, 400, 404 and 500.
EXTRA_STATUSES = {
    "/classify": {
        413: "More texts than the calling tenant may send at once.",
        429: "The calling tenant is over its requests per second: retry after Retry-After seconds.",
        503: "No champion is loaded yet, or the worker is overloaded: retry shortly.",
    },
    "/feedback": {
        409: "Feedback on this item of this request was given already: it is taken once.",
        429: "The calling tenant is over its requests per second: retry after Retry-After seconds.",
    },
}
http.attach_middleware(
    TuneloopService, EXTRA_STATUSES, extra_json=_project_routes("classify") + _project_routes("feedback")
)
