"""The HTTP seam: the FastAPI app mounted beside the BentoML APIs, and where middleware attaches.

BentoML serves POST APIs, /livez, /readyz, /metrics and the OpenAPI page; plain GET endpoints
(/status) live on this app, mounted at "/" (BentoML mounts it passively: only its own routes
match). Hardening that wraps every request (body-size limit, auth, overload answers) belongs in
`attach_middleware`, which the service calls once on its class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

app = FastAPI(title="tuneloop status", openapi_url=None, docs_url=None, redoc_url=None)


def attach_middleware(
    service: Any, documented: Mapping[str, Mapping[int, str]] | None = None, extra_json: Sequence[str] = ()
) -> None:
    """Add ASGI middleware to the BentoML service (`service.add_asgi_middleware(cls, **options)`).

    `documented`: statuses the handlers answer beyond BentoML's 200/400/404/500, by route, which the
    OpenAPI document at /docs.json should list.
    """
    from tuneloop.serve.metrics import count_tenant
    from tuneloop.serve.middleware import HardeningMiddleware, load_guard

    # Every BentoML API takes a JSON body by POST; the guard refuses other methods and types on them.
    # `extra_json`: the POST routes of the mounted app (/v1/<project>/classify for each project).
    endpoints = {api.route: ["POST"] for api in service.apis.values()} | {
        route: ["POST"] for route in extra_json
    }
    service.add_asgi_middleware(
        HardeningMiddleware, guard=load_guard(endpoints, documented, on_tenant=count_tenant)
    )


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Any:
    """The JSON body every refused request gets: {"error": what to fix}."""
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


@app.exception_handler(StarletteHTTPException)
async def _refused(request: Request, exc: StarletteHTTPException) -> Any:
    """FastAPI's own refusals (a body that is not JSON at all, say) in the service's error shape."""
    return error_response(exc.status_code, str(exc.detail), exc.headers)


@app.exception_handler(RequestValidationError)
async def _invalid_body(request: Request, exc: RequestValidationError) -> Any:
    """A body that fails a route's types: 400 with each problem by field, as the BentoML APIs say it
    (middleware.py rewrites theirs), not FastAPI's 422 list."""
    said = []
    for problem in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.get("loc", ())[1:])
        said.append(f"{loc.lstrip('.') or 'body'}: {problem.get('msg', 'invalid')}")
    return error_response(400, "; ".join(said) or "the body is not valid JSON for this route")
