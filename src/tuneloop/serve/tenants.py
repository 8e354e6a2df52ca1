"""Tenants: who may call which project's /classify and /feedback, and how often. Pure parts only.

A tenant is a bearer token with the projects it may call and a quota: `rps` requests per second
refilling a token bucket of `burst` requests, and `max_texts` texts per request. Tenants live in one
YAML file (`tenants_path`: TUNELOOP_TENANTS_FILE, default <home>/tenants.yaml, mode 0600; in
Kubernetes a Secret mounted read-only), which holds each token's sha256, never the token:

    tenants:
      - id: acme                     # [a-z0-9][a-z0-9_-]*, at most 40: a metric label value
        token_sha256: 3f1c...        # hash_token(token); the token is shown once, by `tenant add`
        projects: [default, cards]
        rps: 10.0
        burst: 20
        max_texts: 64

The file is written by `tuneloop tenant add|rotate|remove` (steps/tenants.py) and re-read by the
service when it changes (tenant_gate.py). The quota holds per worker process: each worker keeps
its own buckets, so a service of W workers lets a tenant through up to W x rps (the load balancer
in front spreads one tenant's requests over the workers; divide by W when choosing rps for a hard
limit).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Letters, digits, '_' and '-', starting with a letter or digit, at most 40: a Prometheus label
# value and a YAML key without quoting.
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
# A project name as projects.NAME has it; a path segment that is not one names no project.
PROJECT = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
DEFAULT_PROJECT = "default"
# The project label of a tenant's request to a project it may not call: its tenant's own projects
# (from the file) and this one are the only values, so a caller probing /v1/<anything>/classify
# cannot grow the series. Starts with '_', which no project name does.
OTHER_PROJECT = "_other"
DEFAULT_RPS, DEFAULT_BURST, DEFAULT_MAX_TEXTS = 10.0, 20, 64
# The ASGI scope key under which the middleware hands the handlers the tenant of a request.
TENANT_KEY = "tuneloop.tenant"
TENANTS_FILE_VARIABLE = "TUNELOOP_TENANTS_FILE"
ENDPOINTS = ("classify", "feedback")
_V1 = re.compile(r"^/v1/([^/]+)/(classify|feedback|status)$")

Refusal = tuple[int, str, list[tuple[str, str]]]


class TenantError(ValueError):
    """The tenants file, or a change asked of it, is not valid."""


@dataclass(frozen=True)
class Tenant:
    """One entry of the tenants file."""

    id: str
    token_sha256: str
    projects: tuple[str, ...]
    rps: float = DEFAULT_RPS
    burst: int = DEFAULT_BURST
    max_texts: int = DEFAULT_MAX_TEXTS

    def public(self) -> dict[str, Any]:
        """What `tenant list` shows: everything but the hash."""
        return {
            "id": self.id,
            "projects": list(self.projects),
            "rps": self.rps,
            "burst": self.burst,
            "max_texts": self.max_texts,
        }


@dataclass(frozen=True)
class TenantGrant:
    """What the handlers learn of an admitted request (scope[TENANT_KEY]): never the token."""

    id: str
    project: str
    max_texts: int


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """sha256 of the token, hex. A plain hash, no slow KDF (bcrypt, scrypt): those exist to make
    guessing a low-entropy password expensive, but a token from `new_token` has 256 random bits, so
    even 10^12 guesses a second would need ~10^57 years. A slow hash would only cost every request."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tenants_path(home: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """TUNELOOP_TENANTS_FILE when set, else <home>/tenants.yaml (home: config.Settings' by default)."""
    given = environ.get(TENANTS_FILE_VARIABLE)
    if given:
        return Path(given).expanduser()
    if home is None:
        from tuneloop.config import Settings

        home = Settings(**{}).home_dir  # home only: any project shares it
    return home / "tenants.yaml"


def _number(entry: Mapping[str, Any], key: str, default: float, kind: type, where: str) -> Any:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise TenantError(f"{where}: {key} must be a {'whole ' if kind is int else ''}number, got {value!r}")
    if value <= 0 or not math.isfinite(value):
        raise TenantError(f"{where}: {key} must be above 0, got {value!r}")
    return kind(value)


def check_tenant(tenant: Tenant, where: str = "tenant") -> Tenant:
    """`tenant` when every field is valid, else TenantError saying which and why."""
    if not TENANT_ID.match(tenant.id):
        raise TenantError(
            f"{where}: id {tenant.id!r} must be lower-case letters, digits, '_' and '-', starting with a "
            "letter or digit, at most 40 characters (it is a metric label)"
        )
    if not re.fullmatch(r"[0-9a-f]{64}", tenant.token_sha256):
        raise TenantError(f"{where}: token_sha256 must be 64 hex digits (a sha256, never the token)")
    if not tenant.projects:
        raise TenantError(f"{where}: projects is empty: a tenant calls at least one project")
    for project in tenant.projects:
        if not PROJECT.match(project):
            raise TenantError(f"{where}: {project!r} is not a project name")
    return tenant


def tenants_from_data(data: Any, source: str = "the tenants file") -> list[Tenant]:
    """The tenants of a parsed tenants file (None or {} for an empty one); TenantError if malformed."""
    if data is None:
        return []
    if not isinstance(data, dict) or not isinstance(data.get("tenants") or [], list):
        raise TenantError(f"{source} must be a mapping with a `tenants:` list")
    found: list[Tenant] = []
    for i, entry in enumerate(data.get("tenants") or []):
        where = f"{source}, tenant {i + 1}"
        if not isinstance(entry, dict):
            raise TenantError(f"{where} is not a mapping")
        projects = entry.get("projects")
        if isinstance(projects, str) or not isinstance(projects, list):
            raise TenantError(f"{where}: projects must be a list of project names")
        tenant = Tenant(
            id=str(entry.get("id", "")),
            token_sha256=str(entry.get("token_sha256", "")),
            projects=tuple(str(p) for p in projects),
            rps=_number(entry, "rps", DEFAULT_RPS, float, where),
            burst=_number(entry, "burst", DEFAULT_BURST, int, where),
            max_texts=_number(entry, "max_texts", DEFAULT_MAX_TEXTS, int, where),
        )
        found.append(check_tenant(tenant, where))
    ids = [t.id for t in found]
    hashes = [t.token_sha256 for t in found]
    if len(set(ids)) != len(ids):
        raise TenantError(
            f"{source}: tenant ids repeat ({', '.join(sorted({i for i in ids if ids.count(i) > 1}))})"
        )
    if len(set(hashes)) != len(hashes):
        raise TenantError(f"{source}: two tenants hold the same token: rotate one (`tuneloop tenant rotate`)")
    return found


def tenants_to_data(tenants: Sequence[Tenant]) -> dict[str, Any]:
    """The file's content for `tenants` (what tenants_from_data reads back)."""
    return {"tenants": [{"id": t.id, "token_sha256": t.token_sha256, **t.public()} for t in tenants]}


def read_tenants(path: Path) -> list[Tenant]:
    """The tenants in `path` ([] when it does not exist); TenantError when it is malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The problem's position only: the file holds hashes, but a message should not echo it.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise TenantError(f"{path} is not valid YAML{at}") from None
    return tenants_from_data(data, str(path))


class TokenBucket:
    """`rate` tokens a second into a bucket of `capacity`; a request takes one. Starts full, so a
    tenant idle for capacity / rate seconds may send `capacity` requests at once."""

    def __init__(self, rate: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity, self.clock = rate, capacity, clock
        self.tokens = float(capacity)
        self.at = clock()

    def take(self) -> float:
        """0.0 when a token was taken, else the seconds until one will be there (none is taken)."""
        now = self.clock()
        self.tokens = min(float(self.capacity), self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


def project_route(path: str) -> tuple[str, str] | None:
    """(project, endpoint) of a path a tenant's token may open: /v1/{project}/classify|feedback, and
    /classify, /feedback for the default project; None for any other path (or a malformed name)."""
    if path in ("/classify", "/feedback"):
        return DEFAULT_PROJECT, path[1:]
    found = _V1.match(path)
    if found is None or found[2] not in ENDPOINTS or not PROJECT.match(found[1]):
        return None
    return found[1], found[2]


def is_project_status(path: str) -> bool:
    """/v1/{project}/status: read-only, the metrics scope's like /status."""
    found = _V1.match(path)
    return found is not None and found[2] == "status"


def tenant_refusal(tenant: Tenant | None, project: str, wait_s: float = 0.0) -> Refusal | None:
    """401 for no tenant, 403 for a project the tenant may not call, 429 (Retry-After: whole seconds,
    at least 1) when its bucket is empty (`wait_s` > 0: the seconds until a token); else None."""
    if tenant is None:
        return (
            401,
            f"the bearer token is not a tenant's: project '{project}' needs the token of a tenant "
            f"allowed on it (`tuneloop tenant add ID --projects {project}`)",
            [("www-authenticate", 'Bearer realm="tuneloop"')],
        )
    if project not in tenant.projects:
        return (
            403,
            f"tenant '{tenant.id}' may not call project '{project}' (its projects: "
            f"{', '.join(tenant.projects)}); use a token of a tenant allowed on '{project}'",
            [],
        )
    if wait_s > 0:
        retry = max(1, math.ceil(wait_s))
        return (
            429,
            f"tenant '{tenant.id}' is over its quota of {tenant.rps:g} requests/s (burst {tenant.burst}) "
            f"on this worker; retry after {retry} s",
            [("retry-after", str(retry))],
        )
    return None


def tenant_of(scope: Mapping[str, Any]) -> TenantGrant | None:
    """The tenant the middleware admitted this request for (an ASGI scope, e.g. a starlette
    Request's `.scope`); None when a tenant did not make it (an env token, or auth off)."""
    grant = scope.get(TENANT_KEY)
    return grant if isinstance(grant, TenantGrant) else None


def set_tenant(scope: MutableMapping[str, Any], grant: TenantGrant) -> None:
    scope[TENANT_KEY] = grant


def texts_refusal(scope: Mapping[str, Any], count: int) -> tuple[int, str] | None:
    """(413, why) when this request's tenant may send fewer than `count` texts at once, else None.
    The handler calls it: the middleware admits a request before its body is parsed."""
    grant = tenant_of(scope)
    if grant is None or count <= grant.max_texts:
        return None
    return (
        413,
        f"texts holds {count} items; tenant '{grant.id}' may send at most {grant.max_texts} per request",
    )
