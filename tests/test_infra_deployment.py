"""What would break on the first real deployment (issue 23), checked without a cluster.

Each test reads the rendered overlays (the fixtures of tests/test_infra_manifests.py: both overlays
through `kubectl kustomize` from a temporary copy of infra/ with generated secrets) or runs the
libraries' own code on them: prefect-kubernetes' worker, Prefect's and MLflow's settings and CLI,
promtool's rule tests, the service's settings. Each failed on the files before the fix.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from tests import test_infra_manifests as manifests
from tests.test_infra_manifests import (
    FIXED_SECRETS,
    INFRA,
    RELOADED_SECRETS,
    REPO,
    SCOPED_TOKENS,
    STORAGE_CLASS,
    find,
    job_templates,
    pod_specs,
    run,
    tool,
)

# The rendered overlays of tests/test_infra_manifests.py, rendered once per module here too.
infra_copy = manifests.infra_copy
rendered = manifests.rendered
docs = manifests.docs

Docs = dict[str, list[dict[str, Any]]]
PINNED_VARIABLES = ("image", "namespace", "service_account_name", "home_claim")


def container(spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = spec["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "p"), **extra}


# ---------------------------------------------------------------------------------------------
# Would not work


def test_the_work_pool_is_written_from_its_template_before_the_worker_starts(docs: Docs) -> None:
    """An init container creates (or repairs) the pool from the template in the image, with the flow
    image pinned to the worker's own, before `prefect worker start` could create a default pool."""
    dockerfile = (INFRA / "docker" / "worker.Dockerfile").read_text()
    assert "COPY infra/prefect/*.json ./infra/prefect/" in dockerfile
    assert "!infra/prefect/*.json" in (INFRA / "docker" / "worker.Dockerfile.dockerignore").read_text()
    for overlay, items in docs.items():
        spec = find(items, "Deployment", "prefect-worker")["spec"]["template"]["spec"]
        (init,) = spec["initContainers"]
        argv = init["command"]
        assert argv[:3] == ["python", "/app/flows/deploy.py", "pool"], overlay
        assert "--name=tuneloop-k8s" in argv and "--image=$(TUNELOOP_FLOW_IMAGE)" in argv
        template = next(a.split("=", 1)[1] for a in argv if a.startswith("--template="))
        assert template == "/app/infra/prefect/base-job-template.json"
        worker = container(spec, "worker")
        assert env_of(init)["TUNELOOP_FLOW_IMAGE"]["value"] == worker["image"] == init["image"], overlay
        command = worker["command"]
        assert command[command.index("--pool") + 1] == "tuneloop-k8s"
    # The mode the init container runs exists and takes those arguments.
    proc = run(sys.executable, str(REPO / "flows" / "deploy.py"), "pool", "--help")
    assert proc.returncode == 0 and "--template" in proc.stdout and "--image" in proc.stdout, proc.stderr


def test_the_production_claim_needs_a_read_write_many_class(infra_copy: Path, docs: Docs) -> None:
    claim = find(docs["production"], "PersistentVolumeClaim", "tuneloop-home")["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim["storageClassName"] == STORAGE_CLASS
    # Without storage.env the production overlay does not render, and the error names the file.
    overlay = infra_copy / "k8s" / "overlays" / "production"
    saved = (overlay / "storage.env").read_text()
    (overlay / "storage.env").unlink()
    try:
        proc = run(tool("kubectl"), "kustomize", str(overlay))
    finally:
        (overlay / "storage.env").write_text(saved)
    assert proc.returncode != 0 and "storage.env" in proc.stderr
    example = (INFRA / "k8s" / "overlays" / "production" / "storage.env.example").read_text()
    assert re.search(r"^STORAGE_CLASS=$", example, re.M) and "10001" in example
    for provider in ("efs", "filestore", "azure", "nfs", "cephfs"):
        assert provider in example.lower(), provider
    ignored = run("git", "-C", str(REPO), "check-ignore", "-q", "infra/k8s/overlays/production/storage.env")
    assert ignored.returncode == 0


def test_the_service_downloads_versions_to_local_scratch(docs: Docs, tmp_path: Path) -> None:
    for overlay, items in docs.items():
        spec = find(items, "Deployment", "tuneloop-service")["spec"]["template"]["spec"]
        c = container(spec)
        cache = env_of(c)["TUNELOOP_SERVE_CACHE_DIR"]["value"]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == cache)
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert "emptyDir" in volume and "persistentVolumeClaim" not in volume, overlay
    # The service reads that variable (ServeSettings, TUNELOOP_SERVE_ prefix).
    code = "from tuneloop.serve.settings import load_serve_settings; print(load_serve_settings().cache_dir)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=subprocess_env(tmp_path, TUNELOOP_SERVE_CACHE_DIR=cache),
        timeout=60,
    )
    assert proc.stdout.strip() == cache, proc.stderr


def test_a_service_monitor_scrapes_each_replica_once_with_the_metrics_token(docs: Docs) -> None:
    items = docs["production"]
    monitor = find(items, "ServiceMonitor", "tuneloop-service")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    chosen = [
        d
        for d in items
        if d["kind"] == "Service" and selector.items() <= (d["metadata"].get("labels") or {}).items()
    ]
    # One Service: the headless one (both select the same pods; two would scrape each pod twice).
    assert [d["metadata"]["name"] for d in chosen] == ["tuneloop-service-pods"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (
        endpoint["port"] in [p["name"] for p in chosen[0]["spec"]["ports"]] and endpoint["path"] == "/metrics"
    )
    credentials = endpoint["authorization"]["credentials"]
    secret = find(items, "Secret", credentials["name"])
    assert secret["metadata"]["name"] == "metrics-reader" and list(secret["data"]) == [credentials["key"]]
    assert secret["metadata"]["namespace"] == monitor["metadata"]["namespace"]
    # The alerts and the rollout's selector use the job name this ServiceMonitor gives (the Service's).
    rules = (INFRA / "prometheus" / "rules.yaml").read_text()
    assert 'job="tuneloop-service-pods"' in rules
    assert not [d for d in docs["local"] if d["kind"] == "ServiceMonitor"]


def test_alerts_fire_when_the_service_is_down_and_not_in_quiet_hours() -> None:
    """promtool's rule tests: down and absent targets page, quiet hours do not, errors are per call."""
    rules = yaml.safe_load((INFRA / "prometheus" / "rules.yaml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert "TuneloopNoAnswers" not in exprs  # fired in quiet hours, never when down
    assert "absent(up{" in exprs["TuneloopServiceDown"]
    assert "tuneloop_model_seconds_count" in exprs["TuneloopVersionErrorRateHigh"]
    assert "tuneloop_items_total" not in exprs["TuneloopVersionErrorRateHigh"]
    proc = run(tool("promtool"), "test", "rules", str(INFRA / "prometheus" / "rules.test.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The dashboard divides the same way and plots latency per item, as the controller judges.
    dashboard = json.loads((INFRA / "grafana" / "tuneloop.json").read_text())
    exprs_d = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    errors = [e for e in exprs_d if "tuneloop_model_errors_total" in e]
    assert errors and all("tuneloop_model_seconds_count" in e and "items_total" not in e for e in errors)
    assert not [e for e in exprs_d if "tuneloop_model_seconds_bucket" in e]


def test_threads_follow_the_container_cpu_limit(docs: Docs) -> None:
    for overlay, items in docs.items():
        c = container(find(items, "Deployment", "tuneloop-service")["spec"]["template"]["spec"])
        for var in ("TUNELOOP_SERVE_THREADS", "OMP_NUM_THREADS"):
            ref = env_of(c)[var]["valueFrom"]["resourceFieldRef"]
            assert ref == {"containerName": c["name"], "resource": "limits.cpu", "divisor": "1"}, (
                overlay,
                var,
            )
    for name, template in job_templates().items():
        c = container(template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"])
        ref = env_of(c)["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
        assert ref["containerName"] == c["name"] and ref["resource"] == "limits.cpu", name


def test_usable_cores_reads_the_cgroup_quota(tmp_path: Path) -> None:
    import os

    from tuneloop.host import cgroup_cpu_limit, usable_cores

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    assert usable_cores(v2) == min(len(os.sched_getaffinity(0)), 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None and usable_cores(v2) == len(os.sched_getaffinity(0))
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(v1) == 1.0 and usable_cores(v1) == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(v1) is None
    assert cgroup_cpu_limit(tmp_path / "none") is None


def test_production_canary_reads_prometheus(docs: Docs, tmp_path: Path) -> None:
    config = find(docs["production"], "ConfigMap", "tuneloop-config")["data"]
    url = config["TUNELOOP_ROLLOUT_PROMETHEUS_URL"]
    assert url.startswith("http://prometheus-operated.")
    assert 'job="tuneloop-service-pods"' in config["TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR"]
    assert (
        "TUNELOOP_ROLLOUT_PROMETHEUS_URL" not in find(docs["local"], "ConfigMap", "tuneloop-config")["data"]
    )
    # Both job templates pass the two (optional: the local overlay's ConfigMap has neither).
    for name, template in job_templates().items():
        env = env_of(container(template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]))
        for var in ("TUNELOOP_ROLLOUT_PROMETHEUS_URL", "TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR"):
            ref = env[var]["valueFrom"]["configMapKeyRef"]
            assert ref == {"name": "tuneloop-config", "key": var, "optional": True}, (name, var)
    # With that environment the flows' own code builds a Prometheus source, not the replica scraper.
    code = "from tuneloop.steps.metrics import metrics_source; print(type(metrics_source()).__name__)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=subprocess_env(
            tmp_path,
            TUNELOOP_ROLLOUT_PROMETHEUS_URL=url,
            TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR=config["TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR"],
        ),
    )
    assert proc.stdout.strip() == "PrometheusSource", proc.stderr


# ---------------------------------------------------------------------------------------------
# Would hurt


def test_the_prefect_ui_gets_an_api_url_a_browser_reaches(docs: Docs, tmp_path: Path) -> None:
    """Prefect's own settings, with the server container's environment, give the UI a URL that is
    not the in-cluster service name."""
    code = "import prefect.settings as s; print(s.get_current_settings().server.ui.api_url)"
    expected = {
        "local": "http://localhost:4200/api",
        "production": "https://prefect.tuneloop.example.com/api",
    }
    for overlay, items in docs.items():
        server = container(find(items, "Deployment", "prefect-server")["spec"]["template"]["spec"])
        config = find(items, "ConfigMap", "tuneloop-config")["data"]
        env = {**{k: v for k, v in config.items() if k.startswith("PREFECT_")}}
        env.update({e["name"]: e["value"] for e in server["env"] if "value" in e})
        env["PREFECT_HOME"] = str(tmp_path / "prefect")
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env={**subprocess_env(tmp_path), **env},
        )
        assert proc.stdout.strip() == expected[overlay], (overlay, proc.stdout, proc.stderr[-2000:])


def test_mlflow_takes_its_arguments_and_the_ui_origins(docs: Docs) -> None:
    """MLflow's own click command parses the container's arguments, CORS origins included."""
    from mlflow.cli import cli

    for overlay, items in docs.items():
        c = container(find(items, "Deployment", "mlflow")["spec"]["template"]["spec"])
        assert c["command"] == ["mlflow"]
        server = cli.commands["server"]
        ctx = server.make_context("server", list(c["args"][1:]))
        origins = ctx.params["cors_allowed_origins"].split(",")
        hosts = ctx.params["allowed_hosts"].split(",")
        assert {"http://localhost:5000", "https://mlflow.tuneloop.example.com"} <= set(origins), overlay
        # Every origin the UI is served from is also an allowed Host.
        for origin in origins:
            assert origin.split("://", 1)[1] in hosts or origin.split("://", 1)[1].split(":")[0] in hosts


def test_each_deployment_requests_what_it_needs_and_the_laptop_fits(docs: Docs) -> None:
    from flows.deploy import DEPLOYMENTS
    from flows.resources import cpu_cores, job_variables, memory_gib

    standard = {name: job_variables(ep, name, "standard") for ep, name, _ in DEPLOYMENTS}
    cpu = {name: cpu_cores(v["cpu_request"]) for name, v in standard.items()}
    # The 10-minute watch and 15-minute poll ask far less than a training round.
    assert cpu["service"] <= 0.25 and cpu["landing-poll"] <= 0.5 < cpu["loop"]
    # The local overlay's comment: a 4-core, 8 GiB laptop. What the rendered overlay requests (the
    # two one-off setup Jobs aside: done before any flow runs), plus every scheduled deployment at
    # once with `--resources small`, with 1 core and 1 GiB left to kind's node and kube-system.
    requests = [
        c["resources"]["requests"]
        for _, spec in pod_specs(docs["local"])
        for c in spec["containers"]
        if spec.get("restartPolicy") != "OnFailure"
    ]
    scheduled = [job_variables(ep, name, "small") for ep, name, options in DEPLOYMENTS if options]
    total_cpu = sum(cpu_cores(r["cpu"]) for r in requests)
    total_cpu += sum(cpu_cores(v["cpu_request"]) for v in scheduled)
    total_mem = sum(memory_gib(r["memory"]) for r in requests)
    total_mem += sum(memory_gib(v["memory_request"]) for v in scheduled)
    assert total_cpu + 1.0 <= 4.0 and total_mem + 1.0 <= 8.0, (total_cpu, total_mem)


def test_the_hpa_owns_the_replica_count_and_drains_never_wait_on_unready_pods(docs: Docs) -> None:
    for overlay, items in docs.items():
        deployment = find(items, "Deployment", "tuneloop-service")
        hpas = [d for d in items if d["kind"] == "HorizontalPodAutoscaler"]
        assert ("replicas" in deployment["spec"]) == (not hpas), overlay
        pdb = find(items, "PodDisruptionBudget", "tuneloop-service")
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", overlay


WORKER_OVERRIDE = """
import json, sys, uuid
from prefect.client.schemas.objects import FlowRun
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

template = json.load(open(sys.argv[1]))
values = {"image": "evil/miner:latest", "namespace": "default", "service_account_name": "default",
          "home_claim": "someone-elses-data", "cpu_request": "250m"}
config = run_coro_as_sync(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="a-run"))
print(json.dumps(config.job_manifest))
"""


def test_flow_jobs_pin_image_namespace_account_and_claim(tmp_path: Path) -> None:
    """Job variables a deployment (or anyone holding the Prefect auth string) passes cannot change
    the image, namespace, service account or data claim: prefect-kubernetes' own worker builds the
    Job from the template with hostile values and they are ignored."""
    for name, template in job_templates().items():
        assert not set(PINNED_VARIABLES) & set(template["variables"]["properties"]), name
        path = INFRA / "prefect" / name
        proc = subprocess.run(
            [sys.executable, "-c", WORKER_OVERRIDE, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            env=subprocess_env(tmp_path, PREFECT_API_URL="http://127.0.0.1:9/api"),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        job = json.loads(proc.stdout.strip().splitlines()[-1])
        pod = job["spec"]["template"]["spec"]
        c = container(pod)
        assert job["metadata"]["namespace"] == "tuneloop" and pod["serviceAccountName"] == "tuneloop-flow"
        assert c["image"].startswith("tuneloop/worker") and "evil" not in json.dumps(job)
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        ]
        assert claims == ["tuneloop-home"]
        assert c["resources"]["requests"]["cpu"] == "250m"  # a free variable still applies


def test_scraping_classifying_and_feedback_use_separate_tokens(docs: Docs) -> None:
    """A scrape credential cannot post feedback: flows and Prometheus hold the metrics token only."""
    for name, template in job_templates().items():
        text = json.dumps(template)
        env = env_of(container(template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]))
        assert env["TUNELOOP_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "metrics-reader"
        for other in ("TUNELOOP_API_TOKEN", "TUNELOOP_CLASSIFY_TOKEN", "TUNELOOP_FEEDBACK_TOKEN"):
            assert other not in text, (name, other)
    for overlay, items in docs.items():
        for where, spec in pod_specs(items):
            if "tuneloop-service" in where:
                continue
            for c in [*spec["containers"], *spec.get("initContainers", [])]:
                refs = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
                assert not [r for r in refs if r.startswith("service")], (overlay, where)
        tokens = {
            d["metadata"]["name"]: d["data"]
            for d in items
            if d["kind"] == "Secret" and d["metadata"]["name"].startswith("service-")
        }
        (service,) = tokens.values()
        values = [service[k] for k in SCOPED_TOKENS]
        assert len(set(values)) == 3, "the three tokens must differ"
        assert (
            find(items, "Secret", "metrics-reader")["data"]["TUNELOOP_METRICS_TOKEN"]
            == service["TUNELOOP_METRICS_TOKEN"]
        )


def test_rotated_secrets_restart_the_pods_that_read_them(docs: Docs) -> None:
    """Deployments and StatefulSets read Secrets by hashed name: a new value is a new pod template.
    Only Jobs' and the ServiceMonitor's Secrets keep a fixed name (a Job reads it when it starts)."""
    for overlay, items in docs.items():
        for d in items:
            if d["kind"] not in ("Deployment", "StatefulSet"):
                continue
            spec = d["spec"]["template"]["spec"]
            text = json.dumps([*spec["containers"], *spec.get("initContainers", []), spec.get("volumes", [])])
            for fixed in FIXED_SECRETS:
                # A plain value (the worker's setting naming the Jobs' Secret) is fine; a reference is not.
                assert f'"name": "{fixed}"' not in text and f'"secretName": "{fixed}"' not in text, (
                    overlay,
                    d["metadata"]["name"],
                    fixed,
                )
            refs = re.findall(r'"(?:name|secretName)": "([\w-]+)"', text)
            secrets = {s["metadata"]["name"] for s in items if s["kind"] == "Secret"}
            for ref in set(refs) & secrets - set(RELOADED_SECRETS):
                assert re.search(r"-[a-z0-9]{10}$", ref), (overlay, d["metadata"]["name"], ref)


def test_dns_egress_reaches_a_node_local_cache(docs: Docs) -> None:
    for overlay, items in docs.items():
        for policy in (
            d for d in items if d["kind"] == "NetworkPolicy" and "Egress" in d["spec"]["policyTypes"]
        ):
            dns = [r for r in policy["spec"]["egress"] if {p["port"] for p in r["ports"]} == {53}]
            assert dns, (overlay, policy["metadata"]["name"])
            for rule in dns:
                assert "to" not in rule, f"{overlay}: DNS only to kube-dns pods misses NodeLocal DNSCache"
                assert {p["protocol"] for p in rule["ports"]} == {"UDP", "TCP"}


def test_servers_have_startup_probes_that_outlast_their_migrations(docs: Docs) -> None:
    for overlay, items in docs.items():
        for name in ("mlflow", "prefect-server"):
            c = container(find(items, "Deployment", name)["spec"]["template"]["spec"])
            probe = c["startupProbe"]
            assert probe["periodSeconds"] * probe["failureThreshold"] >= 600, (overlay, name)
            assert "initialDelaySeconds" not in c["livenessProbe"], (overlay, name)


def test_the_readmes_claim_only_what_the_files_back(docs: Docs) -> None:
    texts = {p: p.read_text() for p in (INFRA / "README.md", INFRA / "prefect" / "README.md")}
    for path, text in texts.items():
        flat = " ".join(text.split())
        assert not re.search(r"TUNELOOP_HOME[^.]{0,60}emptyDir", flat), f"{path}: TUNELOOP_HOME is the claim"
        assert "prometheus.io/scrape" not in flat or "ignores" in flat
    # Every pool the README's table says runs flows has a worker polling it in the manifests.
    polled = {
        c["command"][c["command"].index("--pool") + 1]
        for items in docs.values()
        for _, spec in pod_specs(items)
        for c in spec["containers"]
        if c.get("command", [])[:3] == ["prefect", "worker", "start"]
    }
    rows = re.findall(
        r"^\| `([\w-]+)` \| kubernetes \| ([^|]+)\|", texts[INFRA / "prefect" / "README.md"], re.M
    )
    assert rows
    for pool, runs in rows:
        assert pool in polled or "no worker" in runs, (
            f"{pool}: the README says it runs flows; nothing polls it"
        )
    readme = " ".join(texts[INFRA / "README.md"].split())
    for unproven in ("TensorRT", "storage.env", "ServiceMonitor", "unproven"):
        assert unproven in readme, unproven


def test_projects_and_tenants_reach_the_pods_that_read_them(docs: Docs, tmp_path: Path) -> None:
    """Issue 26: the projects file (a ConfigMap) in the service, the Prefect worker (deploy.py) and
    every flow-run Job, at TUNELOOP_PROJECTS_FILE; the tenants (the Secret tuneloop-tenants) in the
    service alone, at TUNELOOP_TENANTS_FILE. Both mounted as folders: a subPath mount is never
    updated in place, and the service re-reads its tenants without a restart."""
    from tuneloop.config import Settings
    from tuneloop.projects import declared

    def mounted(spec: dict[str, Any], c: dict[str, Any], path: str) -> dict[str, Any]:
        (mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
        assert mount.get("readOnly") and "subPath" not in mount, mount
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        return volume

    for overlay, items in docs.items():
        config = find(items, "ConfigMap", "tuneloop-config")["data"]
        projects_file = config["TUNELOOP_PROJECTS_FILE"]
        service_spec = find(items, "Deployment", "tuneloop-service")["spec"]["template"]["spec"]
        service = container(service_spec, "service")
        tenants_file = env_of(service)["TUNELOOP_TENANTS_FILE"]["value"]
        volume = mounted(service_spec, service, tenants_file)
        assert (
            volume["secret"]["secretName"] == "tuneloop-tenants" and volume["secret"]["defaultMode"] == 0o440
        )
        secret = find(items, "Secret", "tuneloop-tenants")
        assert secret["metadata"]["name"] == "tuneloop-tenants"  # fixed: updated in place, no restart
        # What gen-secrets.sh writes: the tenants file (serve/tenants.py) with no tenant yet.
        assert yaml.safe_load(base64.b64decode(secret["data"]["tenants.yaml"])) == {"tenants": []}
        # The service's copy of the projects is hashed (it reads them at start: a change restarts it).
        volume = mounted(service_spec, service, projects_file)
        assert re.fullmatch(r"tuneloop-projects-service-[a-z0-9]{10}", volume["configMap"]["name"]), volume
        worker_spec = find(items, "Deployment", "prefect-worker")["spec"]["template"]["spec"]
        worker = container(worker_spec, "worker")
        assert mounted(worker_spec, worker, projects_file)["configMap"]["name"] == "tuneloop-projects"
        data = find(items, "ConfigMap", "tuneloop-projects-service")["data"]["projects.yaml"]
        (fixed,) = [
            d for d in items if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "tuneloop-projects"
        ]
        assert fixed["data"]["projects.yaml"] == data, overlay
        (tmp_path / "projects.yaml").write_text(data)
        assert declared(Settings(projects_file=tmp_path / "projects.yaml")) == {}  # the default alone
    for name, template in job_templates().items():
        spec = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
        job = container(spec, "prefect-job")
        ref = env_of(job)["TUNELOOP_PROJECTS_FILE"]["valueFrom"]["configMapKeyRef"]
        assert (ref["name"], ref["key"]) == ("tuneloop-config", "TUNELOOP_PROJECTS_FILE"), name
        assert mounted(spec, job, projects_file)["configMap"]["name"] == "tuneloop-projects", name
