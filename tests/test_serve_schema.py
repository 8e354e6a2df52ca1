"""An outside check of the API contract: schemathesis against the served OpenAPI document.

A real `bentoml serve` subprocess on 127.0.0.1 (the tiny model world of test_serve_server, the
server helper of test_serve_hardening) publishes /docs.json. The schemathesis CLI generates
requests for all 10 operations in it, the default project's and the /v1/{project} routes
(coverage, fuzzing and stateful phases: valid and invalid bodies, feedback chained on classify
answers), and fails on any 5xx, any response whose status,
headers, content type or body breaks the document, and any invalid request the service accepts.

Left out, and why: `positive_data_acceptance` (schema-valid data must get a 2xx). A /feedback
request_id is an HMAC-signed token, so no generated string can be accepted; and /classify's
document does not yet carry the service's limits (non-empty list, non-blank texts, 64 texts of
2,000 characters), so a valid-by-schema empty list is rightly refused with a 400.

The CLI, not `schemathesis.pytest.from_fixture`: with pytest 9.2 the lazy fixture loader of
schemathesis 4.32 fails at setup ('Function' object has no attribute '_nodeid').
Bounded: 50 examples per operation, seed fixed so a failure reproduces; ~15 s on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from test_serve_hardening import champion, running_server  # noqa: F401  (champion is a fixture)
from test_serve_server import world  # noqa: F401  (a fixture champion needs)
from tuneloop.config import Settings

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture(scope="module")
def served(champion: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:  # noqa: F811
    with running_server(champion, tmp_path_factory.mktemp("schema-log")) as client:
        yield client


def test_served_api_keeps_its_documented_contract(served: httpx.Client, tmp_path: Path) -> None:
    cmd = [
        str(SCHEMATHESIS),
        "run",
        f"{served.base_url}/docs.json",
        "--checks=all",
        "--exclude-checks=positive_data_acceptance",
        "--max-examples=50",
        "--seed=1",
        "--no-shrink",  # a failure is reported as found; shrinking would only cost time
        "--continue-on-failure",
        "--request-timeout=30",
        "--suppress-health-check=all",
        "--no-color",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    assert "10 operations" in report or "10 selected / 10 total" in report, report[-2000:]
    assert httpx.get(f"{served.base_url}/readyz").status_code == 200
