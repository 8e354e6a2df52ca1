"""flows/deploy.py for a Kubernetes cluster: the pinned pool template, job resources, the serve guard.

Pure functions first (no server): pinning the template and refusing one that leaves image,
namespace, service account or state claim to a deployment; each deployment's CPU and memory per
profile, valid against the pool template's schema, and the `small` profile within a 4-core 8 GiB
laptop running kind; the decision that stops `tuneloop worker` from taking over a cluster's
deployments. Then one test against a real `prefect server start` (e2e, by its fixture): a pool a
worker created with Prefect's default template is repaired by `flows/deploy.py pool`, twice with the
same result, and `serve` refuses while a work-pool deployment named continual/loop exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from flows import deploy, resources
from flows.pool import PINNED_VARIABLES, pin_template

from test_deploy_server import _wait, prefect_server, wait_healthy  # noqa: F401 - the fixture, used by name

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "infra" / "prefect" / "base-job-template.json"
IMAGE = "registry.example/tuneloop/worker@sha256:" + "0" * 64


def literal_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template file with any pinned name it still declares written in as its default.

    A no-op on a template that pins them already; lets these tests run on either side of that change.
    """
    template = json.loads(path.read_text())
    properties = template["variables"]["properties"]
    values = {name: properties.pop(name)["default"] for name in PINNED_VARIABLES if name in properties}
    text = json.dumps(template["job_configuration"])
    for name, value in values.items():
        text = re.sub(r"{{\s*" + name + r"\s*}}", value, text)
    template["job_configuration"] = json.loads(text)
    return template


def container(template: dict[str, Any]) -> dict[str, Any]:
    return template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]


@pytest.fixture(scope="module")
def pinned() -> dict[str, Any]:
    template, problems = pin_template(literal_template(), IMAGE)
    assert problems == []
    return template


# --- the pool's template ---------------------------------------------------------------------------


def test_pin_template_writes_the_image_literally_and_again_changes_nothing(pinned) -> None:
    assert container(pinned)["image"] == IMAGE
    assert pinned["job_configuration"]["namespace"] == "tuneloop"
    assert not set(PINNED_VARIABLES) & set(pinned["variables"]["properties"])
    again, problems = pin_template(pinned, IMAGE)
    assert (again, problems) == (pinned, [])
    # Without --image the template's own literal stays.
    assert pin_template(pinned) == (pinned, [])


@pytest.mark.parametrize("name", PINNED_VARIABLES)
def test_a_template_declaring_a_pinned_name_as_a_variable_is_refused(pinned, name) -> None:
    template = json.loads(json.dumps(pinned))
    template["variables"]["properties"][name] = {"type": "string", "default": "anything"}
    _, problems = pin_template(template, IMAGE)
    assert [p for p in problems if name in p and "as job variables" in p], problems


def test_prefects_default_kubernetes_template_is_refused_naming_every_unpinned_name() -> None:
    from prefect_kubernetes.worker import KubernetesWorker

    _, problems = pin_template(KubernetesWorker.get_default_base_job_template(), IMAGE)
    text = "\n".join(problems)
    assert "declares image, namespace, service_account_name as job variables" in text
    assert "{{ namespace }}" in text and "literal namespace" in text


def test_a_templated_image_without_image_flag_is_refused(pinned) -> None:
    template = json.loads(json.dumps(pinned))
    container(template)["image"] = "{{ image }}"
    _, problems = pin_template(template)
    assert any("{{ image }}" in p for p in problems) and any("pass --image" in p for p in problems)
    # --image replaces it: the job's container image is always set when --image is given.
    fixed, problems = pin_template(template, IMAGE)
    assert problems == [] and container(fixed)["image"] == IMAGE


def test_pool_mode_refuses_an_unpinned_template_before_reaching_a_server(tmp_path) -> None:
    from prefect_kubernetes.worker import KubernetesWorker

    path = tmp_path / "default.json"
    path.write_text(json.dumps(KubernetesWorker.get_default_base_job_template()))
    with pytest.raises(SystemExit, match=r"pool: .*declares image, namespace, service_account_name"):
        deploy.main(["pool", "--name", "tuneloop-k8s", "--template", str(path), "--image", IMAGE])


# --- job resources ---------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", resources.PROFILES)
def test_every_deployment_has_resources_valid_against_the_pool_template(pinned, profile) -> None:
    for entrypoint, name, _ in deploy.DEPLOYMENTS:
        variables = resources.job_variables(entrypoint, name, profile)
        assert set(variables) == set(resources.KEYS)
        assert resources.check_job_variables(pinned, variables) == [], (entrypoint, name, profile)


def test_check_job_variables_reports_schema_errors_unknown_names_and_request_over_limit(pinned) -> None:
    problems = resources.check_job_variables(
        pinned, {"cpu_request": 2, "image": "mine", "memory_request": "2Gi", "memory_limit": "1Gi"}
    )
    text = "\n".join(problems)
    assert "cpu_request: 2 is not of type 'string'" in text
    assert "image: not a variable of the pool's template" in text
    assert "memory_request 2Gi is above memory_limit 1Gi" in text


@pytest.mark.parametrize("profile", resources.PROFILES)
def test_watch_and_landing_poll_request_less_than_the_loop(profile) -> None:
    def request(entrypoint: str, name: str) -> tuple[float, float]:
        v = resources.job_variables(entrypoint, name, profile)
        return resources.cpu_cores(v["cpu_request"]), resources.memory_gib(v["memory_request"])

    loop = request("flows/continual.py:continual_flow", "loop")
    for small in [("flows/watch.py:watch_flow", "service"), ("flows/ingest.py:ingest_flow", "landing-poll")]:
        cpu, memory = request(*small)
        assert cpu < loop[0] and memory < loop[1], small
    assert request("flows/train.py:train_flow", "manual") == loop


def test_small_profile_fits_a_4_core_8_gib_laptop_running_kind() -> None:
    free_cpu = resources.LAPTOP_CPU - resources.NODE_RESERVED_CPU - resources.OVERLAY_CPU
    free_memory = (
        resources.LAPTOP_MEMORY_GIB - resources.NODE_RESERVED_MEMORY_GIB - resources.OVERLAY_MEMORY_GIB
    )
    assert (round(free_cpu, 2), round(free_memory, 2)) == (2.3, 4.7)
    small = {(ep, name): resources.job_variables(ep, name, "small") for ep, name, _ in deploy.DEPLOYMENTS}
    # Every scheduled deployment may run at once (the 02:00 round beside the Sunday 03:00 scan and
    # the daily 04:00 gc).
    scheduled = [small[(ep, name)] for ep, name, options in deploy.DEPLOYMENTS if options]
    assert len(scheduled) == 5
    assert sum(resources.cpu_cores(v["cpu_request"]) for v in scheduled) <= free_cpu
    assert sum(resources.memory_gib(v["memory_request"]) for v in scheduled) <= free_memory
    biggest = max(small.values(), key=lambda v: resources.memory_gib(v["memory_limit"]))
    assert biggest is small[("flows/continual.py:continual_flow", "loop")]
    assert resources.memory_gib(biggest["memory_limit"]) <= free_memory
    assert resources.cpu_cores(biggest["cpu_request"]) >= 1  # a round on less than a core crawls


def test_unknown_profile_or_deployment_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown resource profile 'huge'"):
        resources.job_variables("flows/continual.py:continual_flow", "loop", "huge")
    with pytest.raises(ValueError, match="add them to flows/resources.py"):
        resources.job_variables("flows/convert.py:convert_flow", "manual")


def test_quantities_convert_to_cores_and_gib() -> None:
    assert [resources.cpu_cores(q) for q in ("500m", "2", "0.5")] == [0.5, 2.0, 0.5]
    assert [resources.memory_gib(q) for q in ("512Mi", "3Gi", str(2**30))] == [0.5, 3.0, 1.0]
    with pytest.raises(ValueError):
        resources.memory_gib("1GB")


# --- projects: one set of deployments each ----------------------------------------------------------


def test_two_projects_give_two_parameterised_sets_of_deployments_with_their_own_concurrency(pinned) -> None:
    planned = deploy.planned_deployments(["default", "cards"])
    assert len(planned) == 2 * len(deploy.DEPLOYMENTS)
    by_project = {p: [d for d in planned if d.project == p] for p in ("default", "cards")}
    # The default project keeps today's names (docs, `prefect deployment run continual/loop`).
    assert [d.name for d in by_project["default"]] == [name for _, name, _ in deploy.DEPLOYMENTS]
    assert [d.name for d in by_project["cards"]] == [f"{name}-cards" for _, name, _ in deploy.DEPLOYMENTS]
    for d in planned:
        assert d.options["parameters"]["project"] == d.project
        assert f"project:{d.project}" in d.options["tags"]
        variables = resources.job_variables(d.entrypoint, d.base, "standard")
        assert resources.check_job_variables(pinned, variables) == []
    loops = {d.project: d for d in planned if d.entrypoint.endswith(":continual_flow")}
    for project, loop in loops.items():
        # Each project's round has its own limit of 1: a's long rollout queues a's next round only.
        assert loop.options["concurrency_limit"] == 1
        assert loop.options["parameters"] == {"trigger": "schedule", "project": project}
        for trigger in loop.options["triggers"]:
            assert trigger.match.root["tuneloop.project"] == project  # its own project's events only
            assert trigger.parameters["project"] == project
    assert loops["default"] is not loops["cards"]


def test_declared_projects_get_their_deployments_and_flows_take_the_project(monkeypatch, tmp_path) -> None:
    from tuneloop.config import load_settings
    from tuneloop.projects import add_project

    monkeypatch.delenv("TUNELOOP_CONFIG", raising=False)
    monkeypatch.delenv("TUNELOOP_PROJECTS_FILE", raising=False)
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path / "home"))
    assert deploy.declared_projects() == ["default"]
    add_project(load_settings(), "cards")
    add_project(load_settings(), "loans")
    assert deploy.declared_projects() == ["default", "cards", "loans"]
    served = deploy.runner_deployments()
    assert len(served) == 3 * len(deploy.DEPLOYMENTS)
    loans = {d.name: d for d in served if d.parameters.get("project") == "loans"}
    assert set(loans) == {f"{name}-loans" for _, name, _ in deploy.DEPLOYMENTS}
    assert loans["loop-loans"].concurrency_limit == 1 and "project:loans" in loans["loop-loans"].tags
    # Every flow of a deployment takes the project it is given (Prefect checks names against it).
    for d in served:
        assert "project" in d._parameter_openapi_schema.properties, d.name


# --- the serve guard -------------------------------------------------------------------------------


def test_serve_is_refused_over_work_pool_deployments_naming_them_and_the_way_out() -> None:
    existing = {"continual/loop": "tuneloop-k8s", "watch/service": "tuneloop-k8s", "train/manual": None}
    refusal = deploy.refuse_serve(existing, replace=False)
    assert refusal is not None
    assert "continual/loop, watch/service" in refusal and "tuneloop-k8s" in refusal
    assert "train/manual" not in refusal
    assert "--replace" in refusal and "PREFECT_API_URL" in refusal


def test_serve_goes_ahead_over_served_or_absent_deployments_or_with_replace() -> None:
    assert deploy.refuse_serve({}, replace=False) is None
    assert deploy.refuse_serve({"continual/loop": None}, replace=False) is None
    assert deploy.refuse_serve({"continual/loop": "tuneloop-k8s"}, replace=True) is None


def test_replace_reaches_serve_from_tuneloop_worker_and_from_deploy_py(monkeypatch) -> None:
    from typer.testing import CliRunner

    from tuneloop.cli import app
    from tuneloop.cli import flows as cli_flows

    calls: list[list[str]] = []
    monkeypatch.setattr(cli_flows.os, "execv", lambda _exe, argv: calls.append(argv[1:]))
    monkeypatch.setattr(cli_flows.os, "chdir", lambda _path: None)
    for argv in (["worker"], ["worker", "--replace"]):
        assert CliRunner().invoke(app, argv).exit_code == 0
    assert calls == [["-m", "flows.deploy", "serve"], ["-m", "flows.deploy", "serve", "--replace"]]

    served: list[bool] = []
    monkeypatch.setattr(deploy, "serve_all", lambda replace: served.append(replace))
    deploy.main(["serve"])
    deploy.main(["serve", "--replace"])
    assert served == [False, True]


# --- against a real Prefect server (e2e: the prefect_server fixture) -------------------------------


def test_pool_repairs_a_worker_created_pool_and_serve_refuses_then_replaces_its_deployment(
    prefect_server,  # noqa: F811 - the fixture imported above
    tmp_path,
    pinned,
) -> None:
    env, deadline = prefect_server
    api = env["PREFECT_API_URL"]

    def pool() -> dict[str, Any]:
        response = httpx.get(f"{api}/work_pools/tuneloop-k8s", timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    wait_healthy(api, deadline, every=0.5)
    # What `prefect worker start --pool tuneloop-k8s --type kubernetes` does on a pool it cannot find.
    created = run(
        sys.executable, "-m", "prefect", "work-pool", "create", "tuneloop-k8s", "--type", "kubernetes"
    )
    assert created.returncode == 0, created.stdout + created.stderr
    assert pool()["base_job_template"]["job_configuration"]["namespace"] == "{{ namespace }}"

    template = tmp_path / "base-job-template.json"
    template.write_text(json.dumps(literal_template()))
    command = [sys.executable, str(REPO / "flows" / "deploy.py"), "pool", "--name", "tuneloop-k8s"]
    command += ["--template", str(template), "--image", IMAGE]
    first = run(*command)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "pool tuneloop-k8s: updated" in first.stdout
    repaired = pool()
    assert repaired["type"] == "kubernetes"
    assert repaired["base_job_template"] == pinned
    assert repaired["base_job_template"]["job_configuration"]["namespace"] == "tuneloop"
    assert container(repaired["base_job_template"])["image"] == IMAGE

    second = run(*command)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "pool tuneloop-k8s: unchanged" in second.stdout
    assert pool()["base_job_template"] == pinned

    # A cluster's deployment of the name `serve` registers, on the pool.
    flow = httpx.post(f"{api}/flows/", json={"name": "continual"}, timeout=10).json()
    made = httpx.post(
        f"{api}/deployments/",
        json={"name": "loop", "flow_id": flow["id"], "work_pool_name": "tuneloop-k8s"},
        timeout=10,
    )
    assert made.status_code in (200, 201), made.text
    refused = run(sys.executable, str(REPO / "flows" / "deploy.py"), "serve")
    assert refused.returncode != 0
    assert "continual/loop" in refused.stderr and "tuneloop-k8s" in refused.stderr, refused.stderr
    assert "--replace" in refused.stderr
    # Nothing was served: the pool's deployment is as it was and no other deployment exists.
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
    assert [(d["name"], d["work_pool_name"]) for d in deployments] == [("loop", "tuneloop-k8s")]

    # --replace takes them over: the pool's deployment goes, the served one takes its name.
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    serving = subprocess.Popen(
        [sys.executable, str(REPO / "flows" / "deploy.py"), "serve", "--replace"],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def served() -> bool:
            found = httpx.post(f"{api}/deployments/filter", json={}, timeout=10).json()
            return len(found) == len(deploy.DEPLOYMENTS) and all(d["work_pool_name"] is None for d in found)

        _wait("serve --replace to serve every deployment off the pool", served, deadline, every=0.5)
    finally:
        serving.terminate()
        try:
            serving.wait(timeout=15)
        except subprocess.TimeoutExpired:
            serving.kill()
        log.close()
