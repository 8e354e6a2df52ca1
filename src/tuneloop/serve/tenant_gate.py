"""The tenants file as the service sees it, and the one auth decision of the middleware.

`TenantGate` re-reads the tenants file (tenants.py) when it changes, so a token is added, rotated
or removed without a restart: it stats the path at most once a second, on the request path (one
`stat` call, ~1 us). It stats the path, never an open file: a Kubernetes Secret update swaps a
symlink (`tenants.yaml -> ..data/tenants.yaml`, `..data -> ..2024_01_01...`), so the same path names
a new file whose inode, size or mtime differ. A file that does not parse keeps the tenants read
before it (the error is logged, once per change of the file), so a half-edited file locks nobody
out and lets no new token in.

`admit` decides what the middleware does with a request's Authorization header: the token
variables of scopes.py keep their paths (TUNELOOP_API_TOKEN opens every path, /v1 too; the metrics
scope opens /v1/{project}/status), and a tenant's token opens POST /v1/{project}/classify and
/feedback (and /classify, /feedback: the default project) of the projects it is allowed on, within
its quota. Auth is on when a token variable is set or the tenants file exists: an empty file still
closes the service, and a worker that has seen the file keeps auth on if it goes, so removing the
last tenant, or the file, never opens the service.
"""

from __future__ import annotations

import hmac
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.serve.scopes import METRICS_SCOPE, auth_refusal, scope_holders
from tuneloop.serve.tenants import (
    OTHER_PROJECT,
    Refusal,
    Tenant,
    TenantError,
    TenantGrant,
    TokenBucket,
    hash_token,
    is_project_status,
    project_route,
    read_tenants,
    tenant_refusal,
)

log = logging.getLogger("tuneloop.serve")

# Checked at most this often: rotation takes effect within a second, and a worker answering 10,000
# requests a second stats the file once per 10,000 of them.
CHECK_EVERY_S = 1.0
# A tenant's token opens the API's schema too: the callers read it to build their requests.
TENANT_EXTRA_PATHS = frozenset({"/docs.json"})

OnTenant = Callable[[str, str, int], None]


class TenantGate:
    """The tenants of one file, re-read when it changes, and each tenant's token bucket."""

    def __init__(
        self, path: Path, check_every_s: float = CHECK_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path, self.check_every_s, self.clock = path, check_every_s, clock
        self.tenants: tuple[Tenant, ...] = ()
        self.seen = False  # the file existed at some check: auth stays on from then
        self.error: str | None = None  # why the file's last change could not be read
        self._checked = -math.inf
        self._stamp: tuple[int, ...] | None = None
        self._buckets: dict[str, TokenBucket] = {}

    def refresh(self) -> None:
        """Re-read the file if it changed since the last look (at most one stat per check_every_s)."""
        now = self.clock()
        if now - self._checked < self.check_every_s:
            return
        self._checked = now
        try:
            st = os.stat(self.path)  # follows the symlink: a swapped Secret is a new file here
            stamp: tuple[int, ...] | None = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        except OSError as exc:
            stamp = (-1, exc.errno or 0)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        self.seen = self.seen or stamp is not None
        try:
            self._load(read_tenants(self.path) if stamp is not None else [])
            self.error = None
        except (TenantError, OSError, UnicodeDecodeError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "tuneloop serve: tenants file %s not read, the tenants before it stay: %s",
                self.path,
                self.error,
            )

    def _load(self, tenants: list[Tenant]) -> None:
        buckets: dict[str, TokenBucket] = {}
        for tenant in tenants:
            bucket = self._buckets.get(tenant.id)
            # A rotated token keeps its bucket (same tenant, same quota); a new quota starts full.
            if bucket is None or (bucket.rate, bucket.capacity) != (tenant.rps, tenant.burst):
                bucket = TokenBucket(tenant.rps, tenant.burst, self.clock)
            buckets[tenant.id] = bucket
        self.tenants, self._buckets = tuple(tenants), buckets
        log.info("tuneloop serve: %d tenant(s) from %s", len(tenants), self.path)

    def active(self) -> bool:
        """Whether the tenants file exists, or existed once in this process: auth is on then."""
        self.refresh()
        return self.seen

    def lookup(self, token: str) -> Tenant | None:
        """The tenant whose token this is, or None. Compares the token's sha256 with every tenant's,
        all of them, in constant time (no early exit): the time taken says nothing of which."""
        self.refresh()
        digest = hash_token(token)
        found = None
        for tenant in self.tenants:
            if hmac.compare_digest(digest, tenant.token_sha256):
                found = tenant
        return found

    def wait_s(self, tenant: Tenant) -> float:
        """Take one request from the tenant's bucket: 0.0, or the seconds until one is there."""
        return self._buckets[tenant.id].take()

    def describe(self) -> str:
        """For /status and logs: how many tenants, from where (never a token or hash)."""
        said = (
            f"{len(self.tenants)} tenant(s) from {self.path}"
            if self.seen
            else f"no tenants file at {self.path}"
        )
        return f"{said} (not read: {self.error})" if self.error else said


@dataclass(frozen=True)
class Admission:
    """The middleware's auth answer: a refusal or None, the grant for the handlers when a tenant is
    admitted, and (tenant id, project label) when the request counts toward a tenant's metrics."""

    refusal: Refusal | None = None
    grant: TenantGrant | None = None
    counted: tuple[str, str] | None = None


OPEN = Admission()


def admit(
    tokens: Mapping[str, frozenset[str]],
    path_scopes: Mapping[str, str],
    gate: TenantGate | None,
    path: str,
    auth: str,
) -> Admission:
    """Whether a request to `path` with Authorization header `auth` goes on (see the module doc)."""
    tenants_on = gate is not None and gate.active()
    if not tokens and not tenants_on:
        return OPEN
    scopes = {path: METRICS_SCOPE} if is_project_status(path) else path_scopes
    env = auth_refusal(tokens, scopes, path, auth)
    if env is None or env[0] != 401 or gate is None or not tenants_on:
        return Admission(env)  # a token variable's (admitted, or known without the scope), or no tenants
    scheme, _, given = auth.partition(" ")
    tenant = gate.lookup(given.strip()) if scheme.lower() == "bearer" and given.strip() else None
    route = project_route(path)
    if tenant is None:
        if route is None:
            return Admission(env)
        why = "is missing" if not auth else "is not one of the configured tokens"
        holders = " or ".join(scope_holders(scopes.get(path, "all")))
        message = (
            f"the bearer token {why}: {path} needs the token of a tenant allowed on project "
            f"'{route[0]}' (`tuneloop tenant add`) or of {holders}; send 'Authorization: Bearer <token>'"
        )
        return Admission((401, message, env[2]))
    if route is None:
        if path in TENANT_EXTRA_PATHS:
            return OPEN
        message = (
            f"a tenant's token opens only POST /v1/{{project}}/classify and /v1/{{project}}/feedback "
            f"(and /classify, /feedback of the default project); {path} needs the token of "
            f"{' or '.join(scope_holders(scopes.get(path, 'all')))}"
        )
        return Admission((403, message, []))
    project = route[0]
    counted = (tenant.id, project if project in tenant.projects else OTHER_PROJECT)
    refusal = tenant_refusal(tenant, project)
    if refusal is None:
        refusal = tenant_refusal(tenant, project, gate.wait_s(tenant))
    grant = TenantGrant(tenant.id, project, tenant.max_texts) if refusal is None else None
    return Admission(refusal, grant, counted)


Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def answer_counted(
    answer: Callable[[Send], Awaitable[None]], send: Send, on_tenant: OnTenant, counted: tuple[str, str]
) -> None:
    """Run `answer(send)` and then `on_tenant(tenant, project, status)` with its answer's status (500
    when it raised before answering: the server's answer then). A failing callback is logged, never
    the request's failure."""
    statuses: list[int] = []

    async def record(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(int(message["status"]))
        await send(message)

    try:
        await answer(record)
    except Exception:
        statuses.append(500)
        raise
    finally:
        if statuses:
            try:
                on_tenant(counted[0], counted[1], statuses[0])
            except Exception:
                log.exception("tuneloop serve: the tenant metrics callback failed")
