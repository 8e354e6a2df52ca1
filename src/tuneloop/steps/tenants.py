"""Step: `tuneloop tenant add|rotate|list|remove`, the tenants file (serve/tenants.py says what it
holds and serve/tenant_gate.py how the service reads it).

Every change reads the file, changes one entry and writes the whole file to a temporary file in the
same folder, mode 0600, then renames it over the old one: a service reading it at any moment sees
the old file or the new, never half of one. Changes hold an exclusive lock (`.tenants.yaml.lock`
beside it) from the read to the rename, so two operators adding tenants at once both land. A new
token is returned once, to be shown once; only its sha256 is stored. A read-only file, e.g. a
Kubernetes Secret mount, is refused with what to do instead.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from tuneloop.config import Settings
from tuneloop.projects import project_names
from tuneloop.serve.tenants import (
    DEFAULT_BURST,
    DEFAULT_MAX_TEXTS,
    DEFAULT_RPS,
    Tenant,
    TenantError,
    check_tenant,
    hash_token,
    new_token,
    read_tenants,
    tenants_path,
    tenants_to_data,
)


def tenants_file(settings: Settings) -> Path:
    """Where the tenants live: TUNELOOP_TENANTS_FILE, else <home>/tenants.yaml."""
    return tenants_path(settings.home_dir)


def _read_only(path: Path) -> TenantError:
    return TenantError(
        f"{path} is read-only (a mounted Kubernetes Secret?): change the tenants in a writable copy "
        "(TUNELOOP_TENANTS_FILE=./tenants.yaml tuneloop tenant ...), then update the Secret from it "
        "(kubectl create secret generic ... --from-file=tenants.yaml --dry-run=client -o yaml | "
        "kubectl apply -f -); the service re-reads it without a restart"
    )


@contextmanager
def _locked(path: Path) -> Iterator[list[Tenant]]:
    """The tenants, under the file's lock; the caller changes the list, which is written on exit."""
    folder = path.parent
    if (path.exists() and not os.access(path, os.W_OK)) or (
        folder.exists() and not os.access(folder, os.W_OK)
    ):
        raise _read_only(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = (folder / f".{path.name}.lock").open("w")
    except OSError as exc:
        raise _read_only(path) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            tenants = read_tenants(path)
            yield tenants
            _write(path, tenants)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path: Path, tenants: Sequence[Tenant]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(
                "# tuneloop tenants: sha256 of each token, never the token (`tuneloop tenant --help`)\n"
            )
            yaml.safe_dump(tenants_to_data(tenants), handle, sort_keys=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _find(tenants: list[Tenant], tenant_id: str, path: Path) -> int:
    for i, tenant in enumerate(tenants):
        if tenant.id == tenant_id:
            return i
    known = ", ".join(t.id for t in tenants) or "none"
    raise TenantError(
        f"no tenant {tenant_id!r} in {path} (tenants: {known}); add it with `tuneloop tenant add`"
    )


def _check_projects(settings: Settings, projects: Sequence[str]) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(p.strip() for p in projects if p.strip()))
    if not wanted:
        raise TenantError("--projects names no project: give at least one, e.g. --projects default")
    declared = project_names(settings)
    unknown = [p for p in wanted if p not in declared]
    if unknown:
        raise TenantError(
            f"project {', '.join(repr(p) for p in unknown)} is not declared "
            f"(declared: {', '.join(declared)}); "
            f"declare it first with `tuneloop project add {unknown[0]}`"
        )
    return wanted


def add_tenant(
    settings: Settings,
    tenant_id: str,
    projects: Sequence[str],
    *,
    rps: float = DEFAULT_RPS,
    burst: int = DEFAULT_BURST,
    max_texts: int = DEFAULT_MAX_TEXTS,
) -> dict[str, Any]:
    """Add a tenant for `projects` (each declared); returns its entry, the file and its new `token`
    (shown once: only its hash is kept)."""
    if rps <= 0 or burst < 1 or max_texts < 1:
        raise TenantError("--rps must be above 0, --burst and --max-texts at least 1")
    allowed = _check_projects(settings, projects)
    token = new_token()
    tenant = check_tenant(Tenant(tenant_id, hash_token(token), allowed, float(rps), burst, max_texts))
    path = tenants_file(settings)
    with _locked(path) as tenants:
        if any(t.id == tenant_id for t in tenants):
            raise TenantError(
                f"tenant {tenant_id!r} exists in {path}: `tuneloop tenant rotate {tenant_id}` for a new token"
            )
        tenants.append(tenant)
    return {"tenant": tenant.public(), "file": str(path), "token": token}


def rotate_tenant(settings: Settings, tenant_id: str) -> dict[str, Any]:
    """Give a tenant a new token; the old one stops working as soon as the service re-reads the file
    (within a second or so of the file changing)."""
    token = new_token()
    path = tenants_file(settings)
    with _locked(path) as tenants:
        i = _find(tenants, tenant_id, path)
        tenants[i] = replace(tenants[i], token_sha256=hash_token(token))
        tenant = tenants[i]
    return {"tenant": tenant.public(), "file": str(path), "token": token}


def remove_tenant(settings: Settings, tenant_id: str) -> dict[str, Any]:
    """Remove a tenant: its token stops working once the service re-reads the file."""
    path = tenants_file(settings)
    with _locked(path) as tenants:
        gone = tenants.pop(_find(tenants, tenant_id, path))
    return {"tenant": gone.public(), "file": str(path), "removed": True}


def list_tenants(settings: Settings) -> dict[str, Any]:
    """Every tenant: id, projects, quota. Never a token or a hash."""
    path = tenants_file(settings)
    return {"file": str(path), "exists": path.exists(), "tenants": [t.public() for t in read_tenants(path)]}
