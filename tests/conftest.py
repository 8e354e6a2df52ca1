"""Shared fixtures: a fresh TUNELOOP home, and BANKING77 where the shared data folder has it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BANKING77_DIR = REPO_ROOT.parent / "shared" / "data" / "banking77"


# Tests that run a whole loop or a real server get the `e2e` marker here, so `make test-fast`
# (-m "not slow and not e2e") skips them without a marker line in each file. Keyed on the module
# (file name) or on a fixture that starts a server; tests/test_markers.py checks both select tests.
E2E_MODULES = {
    "test_flows.py": "Prefect flows under prefect_test_harness, which starts a Prefect API server",
    "test_continual_flow.py": "the continual flow on the tiny model under prefect_test_harness",
    "test_deploy_server.py": "schedules and event triggers against a real `prefect server start`",
    "test_server_path.py": "MLflow on PostgreSQL, directly and behind an `mlflow server` process",
    "test_real_model.py": "ingest, two training rounds, promotion and conversion on the real MiniLM",
    "test_serve_server.py": "the BentoML service as a `bentoml serve` subprocess following a registry",
    "test_serve_hardening.py": "bad requests and bearer auth against `bentoml serve` subprocesses",
    "test_serve_schema.py": "schemathesis against the OpenAPI document of a `bentoml serve` subprocess",
    "test_ui_approval.py": "approval in the MLflow UI of an `mlflow server`, in a real chromium browser",
    "test_rollout_server.py": "canary rollouts, rollbacks and a killed controller against `bentoml serve`",
    "test_mlflow_model_serve.py": "`mlflow models serve` on a registered version, as a subprocess",
    "test_demo_story.py": "`tuneloop demo`'s path on the tiny model with `tuneloop serve` and canaries",
    "test_auth_server.py": "tuneloop behind `mlflow server --app-name basic-auth` on PostgreSQL",
    "test_registry_postgres_concurrency.py": "8 concurrent writers through `mlflow server` on PostgreSQL",
    "test_s3_artifacts.py": "a round's artifacts through `mlflow server --serve-artifacts` into S3 (moto)",
}
E2E_FIXTURES = {"prefect_harness", "prefect_server"}


@pytest.hookimpl(tryfirst=True)  # before the mark plugin deselects by -m
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in E2E_MODULES or E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _trust_models_made_by_tests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Let adapters name base models that tests built under pytest's own temporary folder.

    A base model recorded in an adapter is read only from folders the settings allow
    (`TUNELOOP_ALLOWED_MODEL_ROOTS`, see tuneloop.train.base); the tiny random BERTs tests make live
    under the session's base temp folder, and subprocesses inherit the variable. Tests of the
    refusal set the variable themselves.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELOOP_ALLOWED_MODEL_ROOTS", str(tmp_path_factory.getbasetemp().resolve()))
        yield


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A TUNELOOP home that does not exist yet: each stage creates what it writes."""
    return tmp_path / "home"


@pytest.fixture(scope="session")
def banking77_dir() -> Path:
    """`../shared/data/banking77` beside the repository; tests that need it skip when it is absent."""
    if not (BANKING77_DIR / "train.csv").is_file():
        pytest.skip(f"BANKING77 is not at {BANKING77_DIR} (the repository ships no copy of it)")
    return BANKING77_DIR
