"""Request hardening in front of the BentoML app: one pure ASGI middleware, no BentoML import.

What it answers itself, before any handler runs, and why here:
- 413 for a body over `max_body_bytes`. BentoML has no body-size setting and reads the whole body
  into memory before validating it, so a 20 MB (or endless chunked) body would be read in full. A
  Content-Length over the limit is refused before one byte is read; a chunked body (no length) is
  counted as it streams in and cut off at the first byte past the limit.
- 415 for a JSON endpoint called with another content type, 405 (with Allow) for a wrong method on
  one, with a message that names the fix (BentoML would try to parse a form body or 404/500 it).
- 401 with `WWW-Authenticate: Bearer` when a token is configured and the request lacks one, and
  403 when its token is known but lacks the scope the path needs (scopes.py: which path needs which
  scope, which token grants which). A tenant's token (tenants.py, tenant_gate.py) opens its
  projects' /v1/{project}/classify and /feedback: 403 on another project, 429 with Retry-After
  over its quota; the admitted tenant goes to the handlers in the scope (tenants.tenant_of).
- 503 with Retry-After when `max_in_flight` requests are already inside: an overloaded worker says
  so at once, instead of queueing without bound until callers time out.
It also adds the statuses a handler answers beyond BentoML's fixed set (200, 400, 404, 500) to the
OpenAPI document at /docs.json (`documented`), so the published contract lists them.
Every refusal is a JSON body `{"error": "<what to fix>"}`, the same shape as the handlers' 4xx.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from tuneloop.serve.scopes import PATH_SCOPES, token_scopes
from tuneloop.serve.tenant_gate import OPEN, OnTenant, TenantGate, admit, answer_counted
from tuneloop.serve.tenants import Refusal, set_tenant, tenants_path

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# The probes stay open without a token: a kubelet or load balancer checks them without credentials,
# and they reveal only "alive" / "ready". /metrics is NOT open: its per-version label counts and
# confidence are business data, and Prometheus sends a bearer token with `authorization:` in its
# scrape config. /healthz is BentoML's older name for /livez.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})

# 1 MiB. The largest body a valid /classify needs: 64 texts x 2,000 characters, each character at
# most 6 bytes as a JSON \uXXXX escape (json.dumps' default ensure_ascii), = 768,000 bytes, plus
# quotes, commas and a key: under 800 kB, so 1 MiB refuses nothing valid at the default limits.
DEFAULT_MAX_BODY_BYTES = 1 << 20


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


@dataclass(frozen=True)
class Guard:
    """What the middleware enforces; the service builds it from settings (see `load_guard`)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    # path -> methods it takes, for endpoints whose body must be JSON (the BentoML APIs).
    json_endpoints: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # token -> the scopes it grants (scopes.TOKEN_SCOPES); empty: no auth at all.
    tokens: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # path -> the one scope it needs; a path not here needs scopes.ALL_SCOPE.
    path_scopes: Mapping[str, str] = field(default_factory=lambda: dict(PATH_SCOPES))
    open_paths: frozenset[str] = OPEN_PATHS
    # Requests inside the app at once (per worker process) on the limited paths; 0 means no bound.
    max_in_flight: int = 0
    limited_paths: frozenset[str] = frozenset()  # empty: every path except the open ones
    retry_after_s: int = 1
    # path -> {status: description}: answers of a POST handler that /docs.json should list too.
    documented: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    # The tenants file's tokens (None: none); on_tenant(tenant, project, status) after each answer
    # to a tenant's project request, for the per-tenant metrics (metrics.py builds the callback).
    tenants: TenantGate | None = None
    on_tenant: OnTenant | None = None


async def send_error(send: Send, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
    """Answer `{"error": message}` with `status`; the connection is closed after it."""
    body = json.dumps({"error": message}).encode()
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        # The rest of an unread body is still on the wire; closing is the only safe end.
        (b"connection", b"close"),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class GuardSettings(BaseSettings):
    """The middleware's knobs: `TUNELOOP_SERVE_<FIELD>`, and the tokens as scopes.TOKEN_SCOPES names them."""

    model_config = SettingsConfigDict(env_prefix="TUNELOOP_SERVE_", extra="ignore", frozen=True)

    api_token: str | None = Field(
        None,
        validation_alias=AliasChoices("TUNELOOP_API_TOKEN", "api_token"),
        description="Bearer token for every path but the probes (all scopes); unset or empty: none.",
    )
    metrics_token: str | None = Field(
        None,
        validation_alias=AliasChoices("TUNELOOP_METRICS_TOKEN", "metrics_token"),
        description="Read-only bearer token: GET /metrics and /status (a Prometheus scrape, the flows).",
    )
    classify_token: str | None = Field(
        None,
        validation_alias=AliasChoices("TUNELOOP_CLASSIFY_TOKEN", "classify_token"),
        description="Bearer token for POST /classify and GET /docs.json (the service's callers).",
    )
    feedback_token: str | None = Field(
        None,
        validation_alias=AliasChoices("TUNELOOP_FEEDBACK_TOKEN", "feedback_token"),
        description="Bearer token for POST /feedback only (a reviewer tool posting labels).",
    )
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="Largest request body.")
    # 64 per worker: the batcher takes at most 64 items per model call and refuses items that would
    # wait past max_latency_ms (3 s); 64 requests of up to 64 texts is already 4,096 texts, 64 full
    # model calls queued, so a caller beyond that would only wait to be refused or time out.
    max_in_flight: int = Field(
        64, ge=0, description="Requests inside a worker at once before 503 (0: unbounded)."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After on an overload 503.")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class HardeningMiddleware:
    """Pure ASGI: `HardeningMiddleware(app, guard=Guard(...))`; non-HTTP scopes pass through."""

    def __init__(self, app: App, guard: Guard | None = None) -> None:
        self.app = app
        self.guard = guard or Guard()
        self.in_flight = 0  # one event loop per worker: plain int, no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        admission = OPEN
        if scope["path"] not in guard.open_paths:
            auth = _header(scope, b"authorization") or ""
            admission = admit(guard.tokens, guard.path_scopes, guard.tenants, scope["path"], auth)
        if admission.grant is not None:
            set_tenant(scope, admission.grant)
        if admission.counted is None or guard.on_tenant is None:
            await self._answer(scope, receive, send, admission.refusal)
        else:  # a tenant's project request: its answer's status goes to the per-tenant metrics
            answer = partial(self._answer, scope, receive, denied=admission.refusal)
            await answer_counted(answer, send, guard.on_tenant, admission.counted)

    async def _answer(self, scope: Scope, receive: Receive, send: Send, denied: Refusal | None) -> None:
        problem = denied or self._refusal(scope)
        if problem is not None:
            await send_error(send, *problem)
            return
        if self._limited(scope["path"]):
            if self.guard.max_in_flight and self.in_flight >= self.guard.max_in_flight:
                await send_error(
                    send,
                    503,
                    f"the service is at its limit of {self.guard.max_in_flight} requests in flight; "
                    f"retry after {self.guard.retry_after_s} s, or spread load over more workers",
                    [("retry-after", str(self.guard.retry_after_s))],
                )
                return
            self.in_flight += 1
            try:
                await self._pass_body(scope, receive, send)
            finally:
                self.in_flight -= 1
        else:
            await self._pass_body(scope, receive, send)

    def _limited(self, path: str) -> bool:
        if path in self.guard.open_paths:
            return False
        return not self.guard.limited_paths or path in self.guard.limited_paths

    def _refusal(self, scope: Scope) -> tuple[int, str, list[tuple[str, str]]] | None:
        """(status, message, headers) for a request refused on its headers alone (auth aside), else None."""
        guard, path, method = self.guard, scope["path"], scope["method"]
        methods = guard.json_endpoints.get(path)
        if methods is not None and method not in methods:
            allowed = ", ".join(sorted(methods))
            return (
                405,
                f"{path} takes {allowed} only (got {method}); send {allowed} with a JSON body",
                [("allow", allowed)],
            )
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                return 400, f"Content-Length {length!r} is not a byte count", []
            if int(length) > guard.max_body_bytes:
                return (
                    413,
                    f"the body has {int(length)} bytes; the limit is {guard.max_body_bytes} "
                    "(send fewer or shorter texts per request)",
                    [],
                )
        if methods is not None and not _has_body(scope):
            # No body at all is a missing argument (400, as the API documents), not a wrong type.
            return 400, f'{path} needs a JSON body, e.g. {{"texts": ["my card was declined"]}}', []
        if methods is not None and not _is_json(_header(scope, b"content-type")):
            got = _header(scope, b"content-type") or "none"
            return (
                415,
                f"{path} takes a JSON body: send 'Content-Type: application/json' (got {got})",
                [],
            )
        return None

    async def _pass_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read the body up to the limit, then hand it to the app; 413 the moment it runs over.

        Reading first (at most max_body_bytes, 1 MiB) costs one copy and means the app never sees
        a partial body: BentoML would read the whole body itself anyway before validating it.
        """
        if scope["method"] in ("GET", "HEAD", "OPTIONS") and not _has_body(scope):
            if scope["path"] == OPENAPI_PATH and self.guard.documented:
                send = _with_documented_statuses(send, self.guard.documented)
            await self.app(scope, receive, send)
            return
        try:
            chunks = await _read_body(receive, self.guard.max_body_bytes)
        except _ClientGone:
            return  # nobody is left to answer
        except _BodyTooLarge:
            await send_error(
                send,
                413,
                f"the body runs past the limit of {self.guard.max_body_bytes} bytes "
                "(send fewer or shorter texts per request)",
            )
            return
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # only http.disconnect is left to come

        if scope["path"] in self.guard.json_endpoints:
            send = _readable_validation_errors(send, scope["path"])
        await self.app(scope, replay, send)


OPENAPI_PATH = "/docs.json"
# BentoML's schema of its error bodies, {"error": "..."}: the shape every refusal here has too.
ERROR_SCHEMA_REF = "#/components/schemas/InvalidArgument"


def _rewrite_response(send: Send, status: int, transform: Callable[[bytes], bytes]) -> Send:
    """A `send` that holds a response with `status` until its whole body is known, then sends
    `transform(body)` with its Content-Length fixed; every other response passes as it comes."""
    start: Message | None = None
    parts: list[bytes] = []

    async def rewrite(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start" and message["status"] == status:
            start = message  # held until the body is known
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        parts.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = transform(b"".join(parts))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    return rewrite


def _with_documented_statuses(send: Send, documented: Mapping[str, Mapping[int, str]]) -> Send:
    """Add `documented`'s statuses to the POST operations of BentoML's OpenAPI document."""

    def add(body: bytes) -> bytes:
        try:
            spec = json.loads(body)
            for path, statuses in documented.items():
                responses = spec["paths"][path]["post"]["responses"]
                for status, description in statuses.items():
                    schema = {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}
                    responses[str(status)] = {"description": description, "content": schema}
            return json.dumps(spec).encode()
        except (ValueError, KeyError, TypeError):
            return body  # not the document expected: pass it on as it was

    return _rewrite_response(send, 200, add)


def _readable_validation_errors(send: Send, path: str) -> Send:
    """Rewrite BentoML's 400 for a body that fails the API's types into one that says what to fix.

    BentoML answers `{"error": "3 validation error for Input", "detail": [pydantic errors]}`: the
    message names no field, and `detail` is a list where its own OpenAPI document promises a
    string (schemathesis flags it). This makes both `texts[0]: Input should be a valid string; ...`.
    """
    return _rewrite_response(send, 400, lambda body: _readable(body, path))


def _readable(body: bytes, path: str) -> bytes:
    try:
        answer = json.loads(body)
        problems = answer["detail"]
        if not isinstance(problems, list):
            return body
        said = []
        for problem in problems:
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.get("loc", ()))
            said.append(f"{loc.lstrip('.') or 'body'}: {problem['msg']}")
    except (ValueError, KeyError, TypeError, AttributeError):
        return body  # not BentoML's validation shape: pass it on as it was
    message = "; ".join(said) + f" (the request schema of {path} is in /docs.json)"
    return json.dumps({"error": message, "detail": "; ".join(said)}).encode()


def _has_body(scope: Scope) -> bool:
    length = _header(scope, b"content-length")
    return (length is not None and length.strip() not in ("", "0")) or (
        _header(scope, b"transfer-encoding") is not None
    )


async def _read_body(receive: Receive, limit: int) -> list[bytes]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks


def configured_tokens(settings: GuardSettings | None = None) -> dict[str, str]:
    """Variable -> token for each token variable set (an empty value is unset); empty: auth off."""
    settings = settings or GuardSettings(**{})
    values = {
        "TUNELOOP_API_TOKEN": settings.api_token,
        "TUNELOOP_METRICS_TOKEN": settings.metrics_token,
        "TUNELOOP_CLASSIFY_TOKEN": settings.classify_token,
        "TUNELOOP_FEEDBACK_TOKEN": settings.feedback_token,
    }
    return {variable: value for variable, value in values.items() if value}


def load_guard(
    json_endpoints: Mapping[str, Iterable[str]],
    documented: Mapping[str, Mapping[int, str]] | None = None,
    tenants_file: Path | None = None,
    on_tenant: OnTenant | None = None,
    **overrides: Any,
) -> Guard:
    """A Guard from the environment, for the service's JSON endpoints (and their extra statuses).

    The token variables of scopes.TOKEN_SCOPES (auth off when none is set; TokenConflict when two share a
    value), TUNELOOP_SERVE_MAX_BODY_BYTES, TUNELOOP_SERVE_MAX_IN_FLIGHT,
    TUNELOOP_SERVE_RETRY_AFTER_S; keyword overrides win. Tenants from `tenants_file`, default
    TUNELOOP_TENANTS_FILE or <home>/tenants.yaml (read when it exists, re-read when it changes).
    """
    settings = GuardSettings(**{k: v for k, v in overrides.items() if v is not None})
    return Guard(
        max_body_bytes=settings.max_body_bytes,
        json_endpoints={
            path: frozenset(m.upper() for m in methods) for path, methods in json_endpoints.items()
        },
        tokens=token_scopes(configured_tokens(settings)),
        max_in_flight=settings.max_in_flight,
        limited_paths=frozenset(json_endpoints),
        retry_after_s=settings.retry_after_s,
        documented=dict(documented or {}),
        tenants=TenantGate(tenants_file or tenants_path()),
        on_tenant=on_tenant,
    )
