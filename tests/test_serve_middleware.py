"""The hardening middleware on a tiny echo app through httpx.ASGITransport (no server, no BentoML).

Each test names one refusal: body size (declared and chunked), content type, method, bearer token
(and its scopes), overload; and that what passes reaches the app whole.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tuneloop.serve.middleware import Guard, HardeningMiddleware, load_guard
from tuneloop.serve.scopes import TOKEN_SCOPES, TokenConflict

pytestmark = pytest.mark.anyio  # anyio's pytest plugin runs the async tests (on asyncio, below)

LIMIT = 64 * 1024
JSON = {"/classify": frozenset({"POST"})}
ALL = TOKEN_SCOPES["TUNELOOP_API_TOKEN"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Echo:
    """Answers 200 with how many body bytes it received; `gate` holds /classify calls inside it."""

    def __init__(self) -> None:
        self.gate: asyncio.Event | None = None
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        if self.gate is not None and scope["path"] == "/classify":
            await self.gate.wait()
        body = json.dumps({"bytes": size}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def client(guard: Guard, app: Echo | None = None) -> httpx.AsyncClient:
    wrapped = HardeningMiddleware(app or Echo(), guard=guard)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://t")


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


def error(response: httpx.Response) -> str:
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


async def test_declared_length_over_limit_is_refused_before_the_app_runs() -> None:
    app = Echo()
    async with client(Guard(max_body_bytes=LIMIT, json_endpoints=JSON), app) as c:
        r = await c.post(
            "/classify", content=b"x" * (LIMIT + 1), headers={"content-type": "application/json"}
        )
    assert r.status_code == 413 and "limit is 65536" in error(r)
    assert app.calls == 0


async def test_chunked_20_mb_body_without_length_is_cut_off_at_the_limit() -> None:
    app = Echo()
    read = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal read
        async for chunk in chunks(20 * 1024 * 1024):
            read += len(chunk)
            yield chunk

    async with client(Guard(max_body_bytes=LIMIT, json_endpoints=JSON), app) as c:
        r = await c.post("/classify", content=counted(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413 and "runs past the limit" in error(r)
    assert app.calls == 0
    assert read <= LIMIT + 64 * 1024  # stopped reading one chunk past the limit, not at 20 MB


async def test_a_body_at_the_limit_reaches_the_app_whole_chunked_or_not() -> None:
    async with client(Guard(max_body_bytes=LIMIT, json_endpoints=JSON)) as c:
        plain = await c.post("/classify", content=b"x" * LIMIT, headers={"content-type": "application/json"})
        chunked = await c.post(
            "/classify", content=chunks(LIMIT, 1000), headers={"content-type": "application/json"}
        )
    assert plain.json() == {"bytes": LIMIT} and chunked.json() == {"bytes": LIMIT}


async def test_json_endpoints_refuse_other_content_types_and_methods() -> None:
    async with client(Guard(json_endpoints=JSON)) as c:
        form = await c.post("/classify", data={"texts": "a"})
        bare = await c.post("/classify", content=b"{}")
        ok = await c.post(
            "/classify", json={"texts": ["a"]}, headers={"content-type": "application/json; charset=utf-8"}
        )
        get = await c.get("/classify")
        put = await c.put("/classify", json={})
        other = await c.get("/status")  # not a JSON endpoint: passes
    assert form.status_code == 415 and "application/json" in error(form)
    assert bare.status_code == 415 and "got none" in error(bare)
    assert ok.status_code == 200
    assert get.status_code == 405 and get.headers["allow"] == "POST" and "POST" in error(get)
    assert put.status_code == 405
    assert other.status_code == 200


async def test_bearer_token_guards_everything_but_the_probes() -> None:
    guard = Guard(json_endpoints=JSON, tokens={"s3cret": ALL})
    async with client(guard) as c:
        missing = await c.post("/classify", json={})
        wrong = await c.post("/classify", json={}, headers={"authorization": "Bearer nope"})
        basic = await c.get("/metrics", headers={"authorization": "Basic s3cret"})
        right = await c.post("/classify", json={}, headers={"authorization": "Bearer s3cret"})
        probes = [await c.get(p) for p in ("/livez", "/readyz")]
        metrics = await c.get("/metrics")
    for r in (missing, wrong, basic, metrics):
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert "Authorization: Bearer" in error(r)
    assert "missing" in error(missing) and "not one of the configured tokens" in error(wrong)
    assert right.status_code == 200 and all(p.status_code == 200 for p in probes)


SCOPED = {  # one token per variable, as load_guard would build them
    "api": TOKEN_SCOPES["TUNELOOP_API_TOKEN"],
    "scrape": TOKEN_SCOPES["TUNELOOP_METRICS_TOKEN"],
    "caller": TOKEN_SCOPES["TUNELOOP_CLASSIFY_TOKEN"],
    "reviewer": TOKEN_SCOPES["TUNELOOP_FEEDBACK_TOKEN"],
}
# (method, path) -> the tokens that open it; every other configured token gets 403.
OPENED_BY = {
    ("GET", "/metrics"): {"api", "scrape"},
    ("GET", "/status"): {"api", "scrape"},
    ("POST", "/classify"): {"api", "caller"},
    ("GET", "/docs.json"): {"api", "caller"},
    ("POST", "/feedback"): {"api", "reviewer"},
    ("GET", "/"): {"api"},  # a path without a scope (the Swagger page, a route added later): all only
}


async def test_each_scoped_token_opens_its_own_paths_and_gets_403_elsewhere() -> None:
    guard = Guard(json_endpoints={**JSON, "/feedback": frozenset({"POST"})}, tokens=SCOPED)
    refused: dict[tuple[str, str], str] = {}
    async with client(guard) as c:
        for (method, path), opening in OPENED_BY.items():
            needed = guard.path_scopes.get(path, "all")
            holders = [variable for variable, scopes in TOKEN_SCOPES.items() if needed in scopes]
            for token in SCOPED:
                bearer = {"authorization": f"Bearer {token}"}
                r = await c.request(method, path, json={"texts": ["a"]}, headers=bearer)
                if token in opening:
                    assert r.status_code == 200, f"{token} {method} {path}: {r.status_code} {r.text}"
                    continue
                assert r.status_code == 403, f"{token} {method} {path}: {r.status_code}"
                assert "www-authenticate" not in r.headers and token not in r.text
                assert f"scope '{needed}'" in error(r) and all(v in error(r) for v in holders)
                refused[token, path] = error(r)
            guess = {"authorization": "Bearer api2"}  # a prefix of a real token is no token
            wrong = await c.request(method, path, json={"texts": ["a"]}, headers=guess)
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
        probes = [await c.get(p) for p in ("/livez", "/readyz", "/healthz")]
    assert all(p.status_code == 200 for p in probes)
    assert refused["scrape", "/feedback"] == (
        "this token lacks scope 'feedback', which /feedback needs: "
        "use the token of TUNELOOP_API_TOKEN or TUNELOOP_FEEDBACK_TOKEN"
    )


async def test_auth_comes_before_anything_that_reads_the_body() -> None:
    app = Echo()
    async with client(Guard(max_body_bytes=LIMIT, json_endpoints=JSON, tokens={"t": ALL}), app) as c:
        r = await c.post(
            "/classify", content=chunks(20 * 1024 * 1024), headers={"content-type": "application/json"}
        )
    assert r.status_code == 401 and app.calls == 0


async def test_overload_answers_503_with_retry_after_at_once_and_recovers() -> None:
    app = Echo()
    app.gate = asyncio.Event()
    guard = Guard(json_endpoints=JSON, max_in_flight=2, limited_paths=frozenset(JSON), retry_after_s=2)
    async with client(guard, app) as c:
        held = [asyncio.create_task(c.post("/classify", json={"texts": ["a"]})) for _ in range(2)]
        while app.calls < 2:
            await asyncio.sleep(0.001)
        over = await asyncio.wait_for(c.post("/classify", json={"texts": ["a"]}), timeout=1.0)
        probe = await asyncio.wait_for(c.get("/readyz"), timeout=1.0)  # probes are never limited
        app.gate.set()
        done = await asyncio.gather(*held)
        after = await c.post("/classify", json={"texts": ["a"]})
    assert over.status_code == 503 and over.headers["retry-after"] == "2" and "retry" in error(over)
    assert probe.status_code == 200
    assert [r.status_code for r in done] == [200, 200] and after.status_code == 200


async def test_in_flight_count_is_released_when_the_app_raises() -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("handler failed")

    middleware = HardeningMiddleware(boom, Guard(json_endpoints=JSON, max_in_flight=1))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=middleware, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for _ in range(3):
            await c.post("/classify", json={})
    assert middleware.in_flight == 0


def test_load_guard_reads_the_tokens_and_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "tok")
    for variable in ("TUNELOOP_METRICS_TOKEN", "TUNELOOP_CLASSIFY_TOKEN", "TUNELOOP_FEEDBACK_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TUNELOOP_SERVE_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("TUNELOOP_SERVE_MAX_IN_FLIGHT", "3")
    guard = load_guard({"/classify": ["post"]})
    assert guard.tokens == {"tok": ALL} and guard.max_body_bytes == 4096 and guard.max_in_flight == 3
    assert guard.json_endpoints == {"/classify": frozenset({"POST"})}
    assert guard.limited_paths == frozenset({"/classify"})
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "")
    assert load_guard({}).tokens == {}
    monkeypatch.setenv("TUNELOOP_METRICS_TOKEN", "m")
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TOKEN", "f")
    assert load_guard({}).tokens == {"m": frozenset({"metrics"}), "f": frozenset({"feedback"})}


def test_two_variables_with_one_token_are_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "shared-secret")
    monkeypatch.setenv("TUNELOOP_METRICS_TOKEN", "shared-secret")
    monkeypatch.delenv("TUNELOOP_CLASSIFY_TOKEN", raising=False)
    monkeypatch.delenv("TUNELOOP_FEEDBACK_TOKEN", raising=False)
    with pytest.raises(TokenConflict) as refused:
        load_guard({"/classify": ["post"]})
    message = str(refused.value)
    assert "TUNELOOP_API_TOKEN and TUNELOOP_METRICS_TOKEN hold the same token" in message
    assert "shared-secret" not in message


async def test_a_json_endpoint_without_a_body_is_told_to_send_one() -> None:
    app = Echo()
    async with client(Guard(json_endpoints=JSON), app) as c:
        r = await c.post("/classify")
    assert r.status_code == 400 and '{"texts"' in error(r) and app.calls == 0


async def test_validation_errors_name_the_field_and_keep_detail_a_string() -> None:
    bentoml_400 = {
        "error": "2 validation error for Input",
        "detail": [
            {"type": "string_type", "loc": ["texts", 1], "msg": "Input should be a valid string"},
            {"type": "model_type", "loc": [], "msg": "Input should be an object"},
        ],
    }

    async def invalid(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        body = json.dumps(bentoml_400 if scope["path"] == "/classify" else {"error": "x", "detail": "y"})
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-length", b"1")]})
        await send({"type": "http.response.body", "body": body.encode()[:5], "more_body": True})
        await send({"type": "http.response.body", "body": body.encode()[5:]})

    guard = Guard(json_endpoints={**JSON, "/other": frozenset({"POST"})})
    async with client(guard, invalid) as c:  # type: ignore[arg-type]
        r = await c.post("/classify", json={"texts": ["a", 1]})
        untouched = await c.post("/other", json={})
    assert r.status_code == 400 and int(r.headers["content-length"]) == len(r.content)
    assert r.json()["detail"] == "texts[1]: Input should be a valid string; body: Input should be an object"
    assert error(r).startswith("texts[1]: Input should be a valid string") and "/docs.json" in error(r)
    assert untouched.json() == {"error": "x", "detail": "y"}
