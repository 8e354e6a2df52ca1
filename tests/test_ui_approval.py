"""A person approves a version in the MLflow UI, in a real browser; the loop's next check sees it.

`mlflow server` (SQLite in tmp, 127.0.0.1, a free port) holds a version registered by tuneloop's
own Registry with the tags a round and a conversion leave (gate=passed, conversion=passed,
approval=pending). Debian's chromium, driven by Playwright, then does what a person does: Model
training > Model registry > tuneloop-intent > Version N, edit the approval tag to `approved`, add
approval_by=alice, save. `check_approvals` must then return that version, and only then.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it) and the `playwright`
package (dev extra). Playwright's own browser downloads are never used: `executable_path` points at
Debian's build.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from tests import mlflow_servers

from tuneloop.config import PROJECT_ROOT, load_settings

CHROMIUM = "/usr/bin/chromium"
APPROVER = "alice"
# Whole test well under 120 s on 2 busy cores: server start ~20 s, registration ~5 s, browser ~15 s.
SERVER_START_S = 60
UI_STEP_TIMEOUT_MS = 20_000


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    port = mlflow_servers.free_port()
    args = (
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
        # 3.17 checks the Host header against DNS rebinding; name the one the browser sends.
        "--allowed-hosts",
        f"127.0.0.1:{port},localhost:{port}",
    )
    with mlflow_servers.mlflow_server(
        f"sqlite:///{tmp_path / 'mlflow.db'}", *args, port=port, ready_s=SERVER_START_S
    ) as url:
        yield url


def _browser_or_skip():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (dev extra: pip install -e .[dev])"
    )
    if not (Path(CHROMIUM).is_file() and shutil.which(CHROMIUM)):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    return sync_api


@pytest.mark.timeout(120)
def test_a_person_approves_in_the_mlflow_ui_and_the_loop_picks_it_up(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    from tuneloop.registry.store import Registry
    from tuneloop.steps.approvals import check_approvals

    sync_api = _browser_or_skip()
    policy = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    policy["approval"]["approvers"] = [APPROVER]
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNELOOP_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("TUNELOOP_POLICY_PATH", str(tmp_path / "policy.yaml"))
    settings = load_settings()
    registry = Registry(settings)
    with mlflow.start_run(experiment_id=registry.experiment_id("tuneloop-ui-test")) as run:
        pass
    tags = {"gate": "passed", "conversion": "passed", "approval": "pending"}
    version = registry.register(run.info.run_id, "model", tags).version
    assert check_approvals(settings) == []

    shot = tmp_path / "approved-in-mlflow-ui.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(UI_STEP_TIMEOUT_MS)
        try:
            _approve_like_a_person(page, mlflow_server, settings.model_name, version, tmp_path)
            page.screenshot(path=str(shot), full_page=True)
        except Exception:
            page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
            raise
        finally:
            browser.close()
    print(f"screenshot: {shot}")

    seen = registry.get_version(version).tags
    assert (seen["approval"], seen["approval_by"]) == ("approved", APPROVER)
    assert [info.version for info in check_approvals(settings)] == [version]


def _approve_like_a_person(page, url: str, model: str, version: str, shots: Path) -> None:
    """The clicks registry/README.md lists under "Approving in the MLflow UI", in MLflow 3.17's UI."""
    page.goto(f"{url}/")
    page.get_by_text("Model training", exact=True).click()  # 3.17 opens on the GenAI side
    page.get_by_role("link", name="Model registry").click()
    # A fresh browser gets a one-time "new Model Registry UI" dialog over the list; a person closes it.
    from playwright.sync_api import TimeoutError as NoDialog

    with contextlib.suppress(NoDialog):  # no dialog: seen before in this browser, or a later MLflow
        page.get_by_role("button", name="Try it now").click(timeout=5_000)
    page.get_by_role("link", name=model, exact=True).click()
    # The model page already shows the version waiting, and how to approve (the model description).
    page.get_by_text("approval", exact=True).first.wait_for()
    assert page.get_by_text(re.compile(r"pending")).count() >= 1
    page.get_by_text(re.compile(r"edit approval to approved and add the tag approval_by")).first.wait_for()
    page.screenshot(path=str(shots / "waiting-in-mlflow-ui.png"), full_page=True)
    page.get_by_role("link", name=f"Version {version}", exact=True).click()

    row = page.locator("tr").filter(has=page.locator("td", has_text=re.compile(r"^approval$")))
    row.get_by_test_id("editable-table-button-edit").click()  # the pencil on the approval row
    row.get_by_test_id("editable-table-edited-input").fill("approved")
    row.get_by_role("button", name="Save").click()
    row.locator("td", has_text=re.compile(r"^approved$")).wait_for()
    page.get_by_placeholder("Name", exact=True).fill("approval_by")
    page.get_by_placeholder("Value", exact=True).fill(APPROVER)
    page.get_by_test_id("add-tag-button").click()
    page.locator("td", has_text=re.compile(rf"^{APPROVER}$")).wait_for()
