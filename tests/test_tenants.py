"""Tenants: tokens stored hashed, the token bucket, the pure refusal, the file (round trip, written
atomically, re-read on change), the CLI, and the middleware in front of a real ASGI app.

Each test names one behaviour; the middleware tests run a FastAPI app whose handlers read the
tenant from the scope, as the service's do, through httpx.ASGITransport (no server, no BentoML).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request
from typer.testing import CliRunner

from tuneloop.cli.main import app as cli
from tuneloop.config import load_settings
from tuneloop.projects import add_project
from tuneloop.serve.middleware import Guard, HardeningMiddleware, load_guard
from tuneloop.serve.scopes import TOKEN_SCOPES
from tuneloop.serve.tenant_gate import TenantGate
from tuneloop.serve.tenants import (
    OTHER_PROJECT,
    TENANT_KEY,
    Tenant,
    TenantError,
    TenantGrant,
    TokenBucket,
    hash_token,
    is_project_status,
    new_token,
    project_route,
    read_tenants,
    tenant_of,
    tenant_refusal,
    tenants_from_data,
    tenants_to_data,
    texts_refusal,
)
from tuneloop.steps import tenants as steps

ACME = Tenant("acme", hash_token("acme-token"), ("cards",), rps=1.0, burst=2, max_texts=3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- pure parts ------------------------------------------------------------------------------
def test_tokens_are_random_and_stored_as_their_sha256() -> None:
    one, two = new_token(), new_token()
    assert one != two and len(one) == 43  # 32 bytes, URL-safe base64 without padding
    assert hash_token(one) == hash_token(one) != hash_token(two)
    assert len(hash_token(one)) == 64 and one not in hash_token(one)


def test_the_bucket_lets_a_burst_through_then_refills_at_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, capacity=3, clock=clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # empty: the next token in 1 / 2 s
    clock.now += 0.25
    assert bucket.take() == pytest.approx(0.25)  # half a token there, none taken
    clock.now += 0.25
    assert bucket.take() == 0.0
    clock.now += 100  # a long pause refills to the burst, no more
    assert [bucket.take() for _ in range(4)][-1] > 0


def test_the_refusal_is_401_403_429_in_that_order() -> None:
    missing = tenant_refusal(None, "cards")
    assert missing is not None and missing[0] == 401
    assert ("www-authenticate", 'Bearer realm="tuneloop"') in missing[2]
    other = tenant_refusal(ACME, "loans", wait_s=5.0)  # another project: 403 before any quota
    assert other is not None and other[0] == 403 and "'loans'" in other[1] and "acme" in other[1]
    assert tenant_refusal(ACME, "cards") is None
    for wait, retry in ((0.01, "1"), (1.0, "1"), (2.3, "3")):
        over = tenant_refusal(ACME, "cards", wait_s=wait)
        assert over is not None and over[0] == 429 and over[2] == [("retry-after", retry)]


def test_routes_name_their_project() -> None:
    assert project_route("/classify") == ("default", "classify")
    assert project_route("/feedback") == ("default", "feedback")
    assert project_route("/v1/cards/classify") == ("cards", "classify")
    assert project_route("/v1/cards/feedback") == ("cards", "feedback")
    for path in ("/v1/cards/status", "/v1/Cards/classify", "/v1/_x/classify", "/status", "/v1/a/b/classify"):
        assert project_route(path) is None, path
    assert is_project_status("/v1/cards/status") and not is_project_status("/status")


def test_texts_over_the_tenants_limit_are_refused_by_the_handlers_check() -> None:
    scope: dict[str, Any] = {TENANT_KEY: TenantGrant("acme", "cards", 3)}
    assert tenant_of(scope) == TenantGrant("acme", "cards", 3)
    assert texts_refusal(scope, 3) is None
    refused = texts_refusal(scope, 4)
    assert refused is not None and refused[0] == 413 and "at most 3" in refused[1]
    assert texts_refusal({}, 1000) is None and tenant_of({}) is None  # no tenant: the service's limits


def test_the_file_round_trips_and_refuses_what_is_malformed() -> None:
    assert tenants_from_data(tenants_to_data([ACME])) == [ACME]
    assert tenants_from_data(None) == [] and tenants_from_data({"tenants": []}) == []
    good = tenants_to_data([ACME])["tenants"][0]
    for bad, why in (
        ({**good, "id": "Acme"}, "id"),
        ({**good, "token_sha256": "acme-token"}, "64 hex"),
        ({**good, "projects": "cards"}, "list"),
        ({**good, "projects": []}, "empty"),
        ({**good, "rps": 0}, "above 0"),
        ({**good, "burst": 1.5}, "whole"),
        ({**good, "max_texts": True}, "number"),
    ):
        with pytest.raises(TenantError, match=why):
            tenants_from_data({"tenants": [bad]})
    with pytest.raises(TenantError, match="repeat"):
        tenants_from_data({"tenants": [good, good]})
    with pytest.raises(TenantError, match="same token"):
        tenants_from_data({"tenants": [good, {**good, "id": "beta"}]})


# --- the file and the CLI --------------------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    for variable in ("TUNELOOP_TENANTS_FILE", "TUNELOOP_PROJECT", "TUNELOOP_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    add_project(load_settings(home=tmp_path), "cards")
    return tmp_path


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": "200"})


def test_cli_add_prints_the_token_once_as_the_last_line_and_stores_only_its_hash(home: Path) -> None:
    added = invoke("tenant", "add", "acme", "--projects", "cards,default", "--rps", "5", "--burst", "7")
    assert added.exit_code == 0, added.output
    token = added.stdout.splitlines()[-1]
    assert added.stdout == token + "\n"  # nothing else on stdout: TOKEN=$(tuneloop tenant add ...)
    assert len(token) == 43 and token not in added.stderr
    path = home / "tenants.yaml"
    assert token.encode() not in path.read_bytes() and hash_token(token).encode() in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (tenant,) = read_tenants(path)
    assert (tenant.id, tenant.projects, tenant.rps, tenant.burst, tenant.max_texts) == (
        "acme",
        ("cards", "default"),
        5.0,
        7,
        64,
    )
    listed, as_json = invoke("tenant", "list"), invoke("tenant", "list", "--json")
    assert "acme" in listed.stdout and "cards, default" in listed.stdout
    assert as_json.stdout.count("\n") == 1 and '"id": "acme"' in as_json.stdout
    for shown in (listed.stdout, as_json.stdout):
        assert token not in shown and hash_token(token) not in shown and hash_token(token)[:12] not in shown


def test_cli_rotate_replaces_the_token_and_remove_drops_the_tenant(home: Path) -> None:
    old = invoke("tenant", "add", "acme", "--projects", "cards").stdout.splitlines()[-1]
    rotated = invoke("tenant", "rotate", "acme")
    assert rotated.exit_code == 0, rotated.output
    new = rotated.stdout.splitlines()[-1]
    assert rotated.stdout == new + "\n" and new != old
    (tenant,) = read_tenants(home / "tenants.yaml")
    assert tenant.token_sha256 == hash_token(new) and tenant.projects == ("cards",)
    assert invoke("tenant", "rotate", "nobody").exit_code == 2
    assert invoke("tenant", "remove", "acme").exit_code == 0
    assert read_tenants(home / "tenants.yaml") == []


def test_cli_refuses_an_undeclared_project_a_taken_id_and_a_bad_id(home: Path) -> None:
    unknown = invoke("tenant", "add", "acme", "--projects", "cards,loans")
    assert unknown.exit_code == 2 and "tuneloop project add loans" in unknown.stderr
    assert not (home / "tenants.yaml").exists()  # nothing written
    assert invoke("tenant", "add", "acme", "--projects", "cards").exit_code == 0
    again = invoke("tenant", "add", "acme", "--projects", "cards")
    assert again.exit_code == 2 and "tenant rotate acme" in again.stderr and again.stdout == ""
    assert invoke("tenant", "add", "Bad Id", "--projects", "cards").exit_code == 2
    assert invoke("tenant", "add", "beta", "--projects", "cards", "--rps", "0").exit_code == 2


def test_a_read_only_tenants_file_is_refused_with_what_to_do(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert invoke("tenant", "add", "acme", "--projects", "cards").exit_code == 0
    before = (home / "tenants.yaml").read_bytes()
    # A Kubernetes Secret mount is read-only; as root a chmod would not stop us, so say so.
    monkeypatch.setattr(steps.os, "access", lambda path, mode: False)
    refused = invoke("tenant", "rotate", "acme")
    assert refused.exit_code == 2 and "read-only" in refused.stderr and "Secret" in refused.stderr
    assert refused.stdout == "" and (home / "tenants.yaml").read_bytes() == before


def test_the_tenants_file_variable_moves_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = home / "secret" / "tenants.yaml"
    monkeypatch.setenv("TUNELOOP_TENANTS_FILE", str(elsewhere))
    assert invoke("tenant", "add", "acme", "--projects", "cards").exit_code == 0
    assert [t.id for t in read_tenants(elsewhere)] == ["acme"] and not (home / "tenants.yaml").exists()


# --- the service's view: the gate and the middleware -----------------------------------------
def test_the_gate_rereads_a_changed_file_at_most_once_a_second(home: Path) -> None:
    settings, clock = load_settings(), Clock()
    gate = TenantGate(home / "tenants.yaml", clock=clock)
    assert not gate.active() and gate.lookup("anything") is None  # no file: no tenants, auth off
    token = steps.add_tenant(settings, "acme", ["cards"])["token"]
    assert not gate.active()  # looked less than a second ago
    clock.now += 1
    assert gate.active() and gate.lookup(token) is not None and gate.lookup(token + "x") is None
    (home / "tenants.yaml").write_text("tenants: [{id: acme")  # half-written by hand
    clock.now += 1
    assert gate.lookup(token) is not None and "not valid YAML" in (gate.error or "")
    (home / "tenants.yaml").unlink()
    clock.now += 1
    assert gate.lookup(token) is None and gate.active()  # a file seen once keeps auth on


def test_the_gate_follows_a_kubernetes_secret_swapping_its_symlink(tmp_path: Path) -> None:
    """A Secret volume is `tenants.yaml -> ..data/tenants.yaml`, `..data -> ..<timestamp>`; an
    update writes a new timestamped folder and renames a new `..data` link over the old one."""
    old, new = new_token(), new_token()
    for folder, token in (("..v1", old), ("..v2", new)):
        (tmp_path / folder).mkdir()
        tenant = Tenant("acme", hash_token(token), ("cards",))
        (tmp_path / folder / "tenants.yaml").write_text(yaml.safe_dump(tenants_to_data([tenant])))
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "tenants.yaml").symlink_to("..data/tenants.yaml")
    clock = Clock()
    gate = TenantGate(tmp_path / "tenants.yaml", clock=clock)
    assert gate.lookup(old) is not None and gate.lookup(new) is None
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    clock.now += 1
    assert gate.lookup(old) is None and gate.lookup(new) is not None


def service_app() -> FastAPI:
    """Handlers that do what the service's do with the tenant: check texts, credit feedback."""
    app = FastAPI()

    async def answer(request: Request, project: str) -> Any:
        body = await request.json()
        problem = texts_refusal(request.scope, len(body.get("texts", [])))
        if problem is not None:
            from starlette.responses import JSONResponse

            return JSONResponse({"error": problem[1]}, status_code=problem[0])
        grant = tenant_of(request.scope)
        return {"project": project, "tenant": grant.id if grant else None}

    @app.post("/v1/{project}/classify")
    async def classify(request: Request, project: str) -> Any:
        return await answer(request, project)

    @app.post("/v1/{project}/feedback")
    async def feedback(request: Request, project: str) -> Any:
        return await answer(request, project)

    @app.post("/classify")
    async def default_classify(request: Request) -> Any:
        return await answer(request, "default")

    @app.get("/v1/{project}/status")
    async def status(project: str) -> Any:
        return {"project": project}

    @app.get("/metrics")
    async def metrics() -> Any:
        return {}

    return app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_middleware_admits_refuses_throttles_and_counts_tenants(home: Path) -> None:
    settings, clock = load_settings(), Clock()
    acme = steps.add_tenant(settings, "acme", ["cards"], rps=1.0, burst=2, max_texts=3)["token"]
    beta = steps.add_tenant(settings, "beta", ["default", "cards"])["token"]
    counted: list[tuple[str, str, int]] = []
    paths = ["/v1/cards/classify", "/v1/cards/feedback", "/v1/default/classify", "/v1/default/feedback"]
    guard = Guard(
        json_endpoints={p: frozenset({"POST"}) for p in [*paths, "/classify"]},
        tokens={
            "admin": TOKEN_SCOPES["TUNELOOP_API_TOKEN"],
            "scrape": TOKEN_SCOPES["TUNELOOP_METRICS_TOKEN"],
        },
        tenants=TenantGate(home / "tenants.yaml", clock=clock),
        on_tenant=lambda tenant, project, status: counted.append((tenant, project, status)),
    )
    transport = httpx.ASGITransport(app=HardeningMiddleware(service_app(), guard=guard))
    body = {"texts": ["my card was declined"]}

    def bearer(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        missing = await c.post("/v1/cards/classify", json=body)
        unknown = await c.post("/v1/cards/classify", json=body, headers=bearer("guess"))
        for r in (missing, unknown):
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert "tenant allowed on project 'cards'" in r.json()["error"]
        assert counted == []  # no tenant, no series
        ok = await c.post("/v1/cards/classify", json=body, headers=bearer(acme))
        assert ok.status_code == 200 and ok.json() == {"project": "cards", "tenant": "acme"}
        for path in ("/v1/default/classify", "/v1/default/feedback", "/classify"):
            other = await c.post(path, json=body, headers=bearer(acme))
            assert other.status_code == 403 and "project 'default'" in other.json()["error"], path
        # acme's burst of 2: one used above, one left, then 429 until a token refills (1 a second).
        too_many = await c.post("/v1/cards/feedback", json={"texts": ["a"] * 4}, headers=bearer(acme))
        assert too_many.status_code == 413 and "at most 3" in too_many.json()["error"]
        over = await c.post("/v1/cards/classify", json=body, headers=bearer(acme))
        assert over.status_code == 429 and over.headers["retry-after"] == "1"
        assert "acme" in over.json()["error"]
        beta_meanwhile = await c.post("/classify", json=body, headers=bearer(beta))  # its own bucket
        assert beta_meanwhile.status_code == 200 and beta_meanwhile.json()["tenant"] == "beta"
        clock.now += 1.0
        assert (await c.post("/v1/cards/classify", json=body, headers=bearer(acme))).status_code == 200

        # Rotation without a restart: the file changes, the gate sees it within a second.
        fresh = steps.rotate_tenant(settings, "acme")["token"]
        clock.now += 1.0
        assert (await c.post("/v1/cards/classify", json=body, headers=bearer(acme))).status_code == 401
        assert (await c.post("/v1/cards/classify", json=body, headers=bearer(fresh))).status_code == 200

        # The token variables keep their paths; the API token opens every /v1 path (no tenant).
        admin = await c.post("/v1/default/classify", json=body, headers=bearer("admin"))
        assert admin.status_code == 200 and admin.json()["tenant"] is None
        assert (await c.get("/v1/cards/status", headers=bearer("scrape"))).status_code == 200
        assert (await c.post("/v1/cards/classify", json=body, headers=bearer("scrape"))).status_code == 403
        for path in ("/v1/cards/status", "/metrics"):  # a tenant's token is for its projects only
            refused = await c.get(path, headers=bearer(beta))
            assert refused.status_code == 403 and "TUNELOOP_METRICS_TOKEN" in refused.json()["error"]
    assert counted == [
        ("acme", "cards", 200),
        ("acme", OTHER_PROJECT, 403),
        ("acme", OTHER_PROJECT, 403),
        ("acme", OTHER_PROJECT, 403),
        ("acme", "cards", 413),
        ("acme", "cards", 429),
        ("beta", "default", 200),
        ("acme", "cards", 200),
        ("acme", "cards", 200),
    ]


@pytest.mark.anyio
async def test_auth_is_on_with_a_tenants_file_even_without_token_variables(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in TOKEN_SCOPES:
        monkeypatch.delenv(variable, raising=False)
    guard = load_guard({"/classify": ["POST"]})  # TUNELOOP_HOME's tenants.yaml, absent yet
    transport = httpx.ASGITransport(app=HardeningMiddleware(service_app(), guard=guard))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.post("/classify", json={"texts": ["a"]})).status_code == 200  # auth off
        (home / "tenants.yaml").write_text("tenants: []\n")  # no tenant yet, but the file says: auth
        assert guard.tenants is not None
        guard.tenants.check_every_s = 0.0
        closed = await c.post("/classify", json={"texts": ["a"]})
        assert closed.status_code == 401 and closed.headers["www-authenticate"].startswith("Bearer")
        assert (await c.get("/livez")).status_code == 404  # the probes stay open (no route here)
        token = steps.add_tenant(load_settings(), "acme", ["default"])["token"]
        opened = await c.post(
            "/classify", json={"texts": ["a"]}, headers={"authorization": f"Bearer {token}"}
        )
        assert opened.status_code == 200 and opened.json()["tenant"] == "acme"


def test_the_metrics_callback_counts_requests_errors_and_throttles_per_tenant() -> None:
    from prometheus_client import REGISTRY

    from tuneloop.serve.metrics import count_tenant

    def value(name: str) -> float:
        return (
            REGISTRY.get_sample_value(f"tuneloop_tenant_{name}_total", {"tenant": "zeta", "project": "cards"})
            or 0.0
        )

    before = {name: value(name) for name in ("requests", "errors", "throttled")}
    for status in (200, 200, 403, 413, 429, 500):
        count_tenant("zeta", "cards", status)
    after = {name: value(name) - before[name] for name in before}
    assert after == {"requests": 6, "errors": 3, "throttled": 1}


def test_the_installed_command_prints_only_the_token_on_stdout(home: Path) -> None:
    import json
    import subprocess
    import sys

    tuneloop = Path(sys.executable).with_name("tuneloop")
    env = {k: v for k, v in os.environ.items() if k != "TUNELOOP_TENANTS_FILE"} | {"TUNELOOP_HOME": str(home)}
    done = subprocess.run(
        [str(tuneloop), "tenant", "add", "acme", "--projects", "cards"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[-1]
    assert done.stdout == token + "\n" and "shown this once" in done.stderr
    listed = subprocess.run(
        [str(tuneloop), "tenant", "list", "--json"], capture_output=True, text=True, env=env
    )
    assert json.loads(listed.stdout)["tenants"][0]["projects"] == ["cards"] and token not in listed.stdout
