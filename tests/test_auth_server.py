"""tuneloop behind `mlflow server --app-name basic-auth` on PostgreSQL: who may do what.

One server for the module (store and users each in a fresh PostgreSQL database), the admin's
password generated here and given through MLflow's auth config (MLFLOW_AUTH_CONFIG_PATH), every
user READ unless granted more. Users authenticate the MLflow way: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD in the environment. The editor (a plain user: it creates the registered
model, so it holds MANAGE on it) runs a round through tuneloop's own steps; an unauthenticated
client and a read-only user are refused alias moves and approvals with a tuneloop error that says
what to set; the read-only user reads what the service needs.
"""

from __future__ import annotations

import os
import secrets
import time

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tests.mlflow_servers import mlflow_server, pg_database, write_auth_config
from typer.testing import CliRunner

from tuneloop.config import PROJECT_ROOT, Settings, load_settings
from tuneloop.registry.store import Registry, RegistryError
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences

pytestmark = pytest.mark.postgres

MODEL = "tuneloop-intent"


class Server:
    """The running server, its users' passwords and a way to act as one of them."""

    def __init__(self, url: str, passwords: dict[str, str]) -> None:
        self.url = url
        self.passwords = passwords

    def act_as(self, monkeypatch: pytest.MonkeyPatch, user: str | None) -> None:
        """Send later MLflow requests as `user` (None: no credentials at all)."""
        if user is None:
            monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
            monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", self.passwords[user])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    import mlflow.server

    root = tmp_path_factory.mktemp("auth")
    passwords = {name: secrets.token_urlsafe(12) for name in ("admin", "editor", "editor2", "reader")}
    with (
        pg_database("tuneloop_store") as store,
        pg_database("tuneloop_users") as users,
        pytest.MonkeyPatch.context() as patch,
    ):
        ini = write_auth_config(root, users, passwords["admin"])
        env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
        with mlflow_server(
            store, "--app-name", "basic-auth", "--artifacts-destination", str(root / "artifacts"), env=env
        ) as url:
            patch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
            patch.setenv("MLFLOW_TRACKING_PASSWORD", passwords["admin"])
            admin = mlflow.server.get_app_client("basic-auth", tracking_uri=url)
            for name in ("editor", "editor2", "reader"):
                admin.create_user(name, passwords[name])
            yield Server(url, passwords)


@pytest.fixture(scope="module")
def settings(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    from tuneloop.testing import make_tiny_bert

    root = tmp_path_factory.mktemp("auth-world")
    return load_settings(
        home=root / "home",
        tracking_uri=server.url,
        base_model=str(make_tiny_bert(root / "tiny", hidden_size=128)),
        # 8, as tiny_loop_settings: with the default 5 golden rows a label (3 before the per-label
        # check needed them) 20 of 30 rows are left to train on, and 6 epochs scored 0.52 < 0.70.
        epochs=8,
        **TINY_TRAIN_SETTINGS,
        replay_fraction=1.0,
        policy_path=PROJECT_ROOT / "registry" / "policy.yaml",
    )


@pytest.fixture(scope="module")
def round_as_editor(server: Server, settings: Settings, tmp_path_factory: pytest.TempPathFactory):
    """Ingest, train, register, approve and promote as the editor, through tuneloop's steps."""
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.release import approve_step, promote_step
    from tuneloop.steps.round import train_step

    with pytest.MonkeyPatch.context() as patch:
        server.act_as(patch, "editor")
        path = tmp_path_factory.mktemp("auth-data") / "drop.csv"
        keyword_sentences(["alpha", "beta", "gamma"], 30, seed=0).to_csv(path, index=False)
        ingest_step(settings, [path])
        trained = train_step(settings, progress=False)
        approved = approve_step(settings, trained["version"], by="ops")
        # Stands in for a passed conversion (promotion requires one; test_convert_step runs it).
        Registry(settings).set_tags(trained["version"], {"conversion": "passed"})
        promoted = promote_step(settings, trained["version"], reason="first model", by="ops")
    return trained, approved, promoted


def test_editor_runs_a_round_end_to_end(round_as_editor, settings: Settings, server: Server, monkeypatch):
    trained, approved, promoted = round_as_editor
    assert trained["gate"]["passed"], trained["gate"]
    assert approved == {"version": trained["version"], "approval": "approved", "by": "ops"}
    assert promoted["champion"] == trained["version"] and promoted["changed"]
    server.act_as(monkeypatch, "editor")
    registry = Registry(settings)
    assert registry.aliases() == {"champion": trained["version"]}
    info = registry.get_version(trained["version"])
    assert info.tags["approval_by"] == "ops" and info.tags["promoted_reason"] == "first model"
    # The lock models the steps took are gone again: released, not left for a lease to expire.
    names = {m.name for m in MlflowClient(server.url).search_registered_models()}
    assert names == {MODEL}


@pytest.mark.parametrize(
    ("user", "status", "sent_as"), [(None, 401, "no user"), ("reader", 403, "the user 'reader'")]
)
def test_anonymous_and_read_only_users_cannot_move_aliases_or_approve(
    round_as_editor, settings: Settings, server: Server, monkeypatch, user, status, sent_as
):
    from tuneloop.steps.release import approve_step

    version = round_as_editor[0]["version"]
    server.act_as(monkeypatch, user)
    # The server itself refuses, whatever client asks...
    with pytest.raises(MlflowException) as raw:
        MlflowClient(server.url).set_registered_model_alias(MODEL, "champion", version)
    assert raw.value.get_http_status_code() == status
    # ...and tuneloop says so, and what to set. The approve step goes through the lock first.
    for attempt in (
        lambda: Registry(settings).set_alias("challenger", version),
        lambda: approve_step(settings, version, by="mallory"),
        lambda: Registry(settings).set_tags(version, {"approval": "approved"}),
    ):
        with pytest.raises(RegistryError) as refused:
            attempt()
        message = str(refused.value)
        assert "refused by the MLflow server" in message and str(status) in message, message
        assert f"sent as {sent_as}" in message and "MLFLOW_TRACKING_PASSWORD" in message, message
        assert "EDIT" in message
    server.act_as(monkeypatch, "editor")
    info = Registry(settings).get_version(version)
    assert info.aliases == ["champion"] and info.tags["approval_by"] == "ops"  # nothing moved


def test_read_only_user_reads_what_the_service_needs(round_as_editor, settings, server, monkeypatch):
    version = round_as_editor[0]["version"]
    server.act_as(monkeypatch, "reader")
    registry = Registry(settings)
    assert registry.aliases() == {"champion": version}
    assert registry.alias("champion").tags["conversion"] == "passed"
    folder = registry.download(version, "merged", verify=True)  # artifacts proxied by the server
    assert (folder / "model.safetensors").is_file()


def test_a_stale_lock_of_another_user_needs_manage_to_break(settings: Settings, server: Server, monkeypatch):
    import mlflow.server

    # The editor took a lock and was killed: its lock model stays, its lease has run out.
    server.act_as(monkeypatch, "editor")
    expired = f"{time.time() - 5:.3f}"
    tags = {"tuneloop.lock": "true", "holder": "gone/1/dead", "acquired_at": expired, "expires_at": expired}
    MlflowClient(server.url).create_registered_model(f"{MODEL}.lock.handover", tags=tags)
    # Another writer may read it (default READ) but not break it: deleting needs MANAGE.
    server.act_as(monkeypatch, "editor2")
    refused = pytest.raises(RegistryError, match="refused by the MLflow server.*'editor2'")
    with refused, Registry(settings).lock("handover", timeout_s=5):
        pass
    server.act_as(monkeypatch, "admin")
    admin = mlflow.server.get_app_client("basic-auth", tracking_uri=server.url)
    # Permissions are per registered model or "*": MLflow has no grant on a name prefix.
    admin.grant_user_permission("editor2", "registered_model", "*", "MANAGE")
    server.act_as(monkeypatch, "editor2")
    with Registry(settings).lock("handover", timeout_s=10) as holder:
        held = MlflowClient(server.url).get_registered_model(f"{MODEL}.lock.handover").tags
        assert held["holder"] == holder


def test_cli_masks_the_password_in_uris_and_errors(round_as_editor, settings: Settings, server, monkeypatch):
    """`tuneloop config`, `status` and a refused `approve` print no password, whichever way it came."""
    from tuneloop.cli import app

    version = round_as_editor[0]["version"]
    password = server.passwords["reader"]
    host = server.url.removeprefix("http://")
    server.act_as(monkeypatch, "reader")
    monkeypatch.setenv("TUNELOOP_HOME", str(settings.home))
    monkeypatch.setenv("TUNELOOP_TRACKING_URI", f"http://reader:{password}@{host}")
    monkeypatch.setenv("TUNELOOP_POLICY_PATH", str(settings.policy_path))
    runner = CliRunner()
    for args in (["config"], ["status"], ["status", "--json"], ["approve", version, "--by", "ops"]):
        result = runner.invoke(app, args)
        assert password not in result.output, (args, result.output)
        if args[0] != "approve":
            assert result.exit_code == 0, (args, result.output)
            assert f"http://reader:****@{host}" in result.output, (args, result.output)
    assert result.exit_code != 0 and "MLFLOW_TRACKING_USERNAME" in result.output, result.output
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == password
