"""Static checks of infra/: the Kubernetes overlays, images, work-pool templates, alerts, dashboard.

No cluster and no Docker engine here, so these check what can be checked without one: every overlay
renders (`kubectl kustomize`), validates against the Kubernetes schemas (kubernetes-validate) and
passes checkov; the Dockerfiles pass checkov; `promtool` accepts the alert rules; and the properties
issue 11 found missing are asserted one by one (no committed passwords, MLflow's allowed hosts and
basic-auth, no ENTRYPOINT in the worker image, credentials by Secret reference in the job template,
probes, non-root containers with resources).

checkov and kubernetes-validate live in .venv-infra (infra/check-tools.sh), not in the project's
environment: checkov pins packages that clash with requirements.lock. A missing tool fails the test
with the command to run, rather than skipping it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
TOOLS = REPO / ".venv-infra" / "bin"
OVERLAYS = ("local", "production")
SETUP_HINT = "run infra/check-tools.sh (it creates .venv-infra and checks for promtool and kubectl)"
WORKLOADS = ("Deployment", "StatefulSet", "Job")
# Hosts clients use for MLflow inside the cluster; MLflow 3.17 refuses other Host headers.
MLFLOW_CLIENT_HOSTS = ("mlflow:5000", "mlflow.tuneloop.svc.cluster.local:5000", "localhost:5000")
STORAGE_CLASS = "efs-rwx"
SCOPED_TOKENS = ("TUNELOOP_METRICS_TOKEN", "TUNELOOP_CLASSIFY_TOKEN", "TUNELOOP_FEEDBACK_TOKEN")
# Secrets Jobs and the ServiceMonitor name (no hash suffix); every other one restarts its pods.
FIXED_SECRETS = ("mlflow-trainer", "prefect-client", "metrics-reader")
# Fixed-name Secrets a Deployment mounts on purpose: the service re-reads the file when the kubelet
# swaps it in place (serve/tenant_gate.py), so a change must not restart the pods.
RELOADED_SECRETS = ("tuneloop-tenants",)


def tool(name: str) -> str:
    """Path of a checker; fails (not skips) with the setup command when it is missing."""
    path = TOOLS / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if name in ("promtool", "kubectl") and found:
        return found
    pytest.fail(f"{name} not found: {SETUP_HINT}")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


# ---------------------------------------------------------------------------------------------
# Rendering: a temporary copy of infra/ with freshly generated secret files (never the repo's).


@pytest.fixture(scope="module")
def infra_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("infra") / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("*.env", "auth_config.ini"))
    assert not (copy / "k8s" / "overlays" / "production" / "storage.env").exists()
    proc = run("bash", str(copy / "gen-secrets.sh"))
    assert proc.returncode == 0, proc.stderr
    # The production overlay's required setting (storage.env.example says what to put there).
    (copy / "k8s" / "overlays" / "production" / "storage.env").write_text(f"STORAGE_CLASS={STORAGE_CLASS}\n")
    return copy


@pytest.fixture(scope="module")
def rendered(infra_copy: Path) -> dict[str, Path]:
    """overlay name -> file holding its `kubectl kustomize` output."""
    kubectl = tool("kubectl")
    out = {}
    for overlay in OVERLAYS:
        proc = run(kubectl, "kustomize", str(infra_copy / "k8s" / "overlays" / overlay))
        assert proc.returncode == 0, f"{overlay} does not render: {proc.stderr}"
        path = infra_copy.parent / f"{overlay}.yaml"
        path.write_text(proc.stdout)
        out[overlay] = path
    return out


@pytest.fixture(scope="module")
def docs(rendered: dict[str, Path]) -> dict[str, list[dict[str, Any]]]:
    return {name: [d for d in yaml.safe_load_all(path.read_text()) if d] for name, path in rendered.items()}


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(hits) == 1, f"expected one {kind} {name}, found {len(hits)}"
    return hits[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in WORKLOADS:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def job_templates() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((INFRA / "prefect").glob("*.json"))}


def fill_template(template: dict[str, Any]) -> dict[str, Any]:
    """The Job a worker would submit: `{{ var }}` placeholders replaced by the variables' defaults."""
    values = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    values.update(name="flow-run", command=["python", "-m", "prefect.engine"], labels={})
    values["job_watch_timeout_seconds"] = None

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        if isinstance(node, str):
            whole = re.fullmatch(r"\{\{ (\w+) \}\}", node)
            if whole:
                return values[whole.group(1)]
            return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(values[m.group(1)]), node)
        return node

    job = fill(template["job_configuration"]["job_manifest"])
    # prefect-kubernetes insists on these two in the pod spec (its default template has them there);
    # they are Job fields, so Kubernetes drops them from a pod spec and the strict schema refuses them.
    for key in ("parallelism", "completions"):
        job["spec"]["template"]["spec"].pop(key)
    return job


# ---------------------------------------------------------------------------------------------
# Tools: render, schemas, checkov, promtool.


def test_overlays_render_into_namespace_tuneloop(docs: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, items in docs.items():
        kinds = {d["kind"] for d in items}
        assert {"Namespace", "Deployment", "StatefulSet", "Secret", "NetworkPolicy"} <= kinds, overlay
        for d in items:
            if d["kind"] != "Namespace":
                assert d["metadata"].get("namespace") == "tuneloop", (overlay, d["kind"], d["metadata"])


def test_manifests_validate_against_kubernetes_schemas(
    rendered: dict[str, Path], docs: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    # kubernetes-validate knows only built-in kinds: the PrometheusRule (a CRD of the Prometheus
    # operator) is left out here and its structure asserted in test_prometheus_rule_matches_rules_file.
    files = []
    for overlay, items in docs.items():
        path = tmp_path / f"{overlay}.yaml"
        builtin = [d for d in items if d["apiVersion"] != "monitoring.coreos.com/v1"]
        path.write_text(yaml.safe_dump_all(builtin))
        files.append(str(path))
    # The Jobs the work-pool templates make, with their defaults filled in.
    for name, template in job_templates().items():
        path = tmp_path / f"job-{name}.yaml"
        path.write_text(yaml.safe_dump(fill_template(template)))
        files.append(str(path))
    proc = run(tool("kubernetes-validate"), "--strict", "--quiet", *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def checkov_failures(*args: str) -> tuple[int, list[str]]:
    proc = run(tool("checkov"), *args, "--quiet", "--compact", "--skip-download", "-o", "json", timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    passed = sum(r["summary"]["passed"] for r in reports)
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for r in reports
        for c in r["results"]["failed_checks"]
    ]
    return passed, failed


def test_checkov_passes_on_rendered_manifests(rendered: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    folder.mkdir()
    for overlay, path in rendered.items():
        shutil.copy(path, folder / f"{overlay}.yaml")
    jobs = [fill_template(t) for t in job_templates().values()]
    (folder / "flow-jobs.yaml").write_text(yaml.safe_dump_all(jobs))
    passed, failed = checkov_failures("-d", str(folder), "--framework", "kubernetes")
    assert passed > 100 and not failed, "\n".join(failed)


def test_checkov_skips_carry_reasons(docs: dict[str, list[dict[str, Any]]]) -> None:
    skips = [
        value
        for items in docs.values()
        for d in items
        for key, value in (d["metadata"].get("annotations") or {}).items()
        if key.startswith("checkov.io/skip")
    ]
    assert skips
    for value in skips:
        check, _, reason = value.partition("=")
        assert re.fullmatch(r"CKV2?_K8S_\d+", check) and len(reason) > 40, value
    for dockerfile in (INFRA / "docker").glob("*.Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("#checkov:skip="):
                check, _, reason = line.removeprefix("#checkov:skip=").partition(":")
                assert re.fullmatch(r"CKV2?_DOCKER_\d+", check) and len(reason) > 40, line


def test_checkov_passes_on_dockerfiles() -> None:
    files = sorted((INFRA / "docker").glob("*.Dockerfile"))
    assert {f.name for f in files} == {"service.Dockerfile", "worker.Dockerfile"}
    args = [a for f in files for a in ("-f", str(f))]
    passed, failed = checkov_failures(*args, "--framework", "dockerfile")
    assert passed > 20 and not failed, "\n".join(failed)


def test_promtool_accepts_rules() -> None:
    proc = run(tool("promtool"), "check", "rules", str(INFRA / "prometheus" / "rules.yaml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    # promtool has no bare query check; each panel query becomes a recording rule it must parse.
    dashboard = json.loads((INFRA / "grafana" / "tuneloop.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    rules = [
        {"record": f"tuneloop:dashboard_{i}", "expr": e.replace("$__rate_interval", "5m")}
        for i, e in enumerate(exprs)
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run(tool("promtool"), "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# Metrics, alerts, dashboard: in step with the service's metric names.


def service_metric_names() -> set[str]:
    source = (REPO / "src" / "tuneloop" / "serve" / "metrics.py").read_text()
    names = set()
    for kind, base in re.findall(r'(Counter|Histogram)\(\s*"(tuneloop_\w+)"', source):
        suffixes = ("_total",) if kind == "Counter" else ("_bucket", "_sum", "_count")
        names |= {base + s for s in suffixes}
    assert names, "no metric found in serve/metrics.py"
    return names


def test_alerts_and_dashboard_use_the_service_metric_names() -> None:
    known = service_metric_names()
    rules = yaml.safe_load((INFRA / "prometheus" / "rules.yaml").read_text())
    dashboard = json.loads((INFRA / "grafana" / "tuneloop.json").read_text())
    queries = {
        "rules.yaml": [r["expr"] for g in rules["groups"] for r in g["rules"]],
        "tuneloop.json": [t["expr"] for p in dashboard["panels"] for t in p["targets"]],
    }
    for name, exprs in queries.items():
        used = set(re.findall(r"\btuneloop_[a-z_]+\b", "\n".join(exprs)))
        assert used and used <= known, f"{name}: unknown metrics {sorted(used - known)}"


def test_every_per_version_figure_is_per_project() -> None:
    """Two projects' versions share numbers: every aggregation that keeps model_version keeps project,
    and every dashboard query reads the projects picked in its `project` variable."""
    rules = yaml.safe_load((INFRA / "prometheus" / "rules.yaml").read_text())
    dashboard = json.loads((INFRA / "grafana" / "tuneloop.json").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    panels = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    groupings = re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", "\n".join(exprs + panels))
    per_version = [g for g in groupings if "model_version" in g]
    assert per_version and all("project" in g for g in per_version), per_version
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "project" in variables["project"]["query"]["query"] and variables["project"]["includeAll"]
    for expr in panels:
        for selector in re.findall(r"\btuneloop_\w+(\{[^}]*\})?\[", expr):
            assert 'project=~"$project"' in selector, expr


def test_prometheus_rule_matches_rules_file(docs: dict[str, list[dict[str, Any]]]) -> None:
    plain = yaml.safe_load((INFRA / "prometheus" / "rules.yaml").read_text())
    rule = find(docs["production"], "PrometheusRule", "tuneloop-canary")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == plain["groups"], "prometheusrule.yaml differs from rules.yaml"
    alerts = {r["alert"] for g in plain["groups"] for r in g["rules"]}
    assert {"TuneloopVersionErrorRateHigh", "TuneloopVersionLatencyHigh"} <= alerts
    # kind has no Prometheus operator: the local overlay must not need its CRD.
    assert not [d for d in docs["local"] if d["kind"] == "PrometheusRule"]


# ---------------------------------------------------------------------------------------------
# Secrets: generated, referenced, never committed.

LITERAL_SECRET = [
    # NAME_PASSWORD=value or NAME_PASSWORD: value, where the value is not a $variable or reference.
    re.compile(
        r"(?i)\b\w*(password|secret_key|auth_string|api_token)\w*[ \t]*[:=][ \t]*[\"']?"
        r"(?![$\"'{(</`])[^\s$]{4,}(?=[\s\"']|$)"
    ),
    # scheme://user:password@host with a literal password.
    re.compile(r"://[\w.-]+:(?![$<{])[^@\s/]+@"),
]


def literal_secrets(text: str) -> list[str]:
    return [m.group(0) for pattern in LITERAL_SECRET for m in pattern.finditer(text)]


def test_secret_scan_catches_literal_passwords() -> None:
    assert literal_secrets("stringData:\n  MLFLOW_DB_PASSWORD: change-me\n")
    assert literal_secrets("uri: postgresql://mlflow:change-me@postgres:5432/mlflow")
    assert not literal_secrets("MLFLOW_DB_PASSWORD=$mlflow_db\nkey: MLFLOW_TRACKING_PASSWORD}\n")


def test_no_secret_values_committed_under_infra() -> None:
    listed = run("git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "infra")
    files = [REPO / f for f in listed.stdout.split() if (REPO / f).is_file()]
    assert len(files) > 10
    for path in files:
        text = path.read_text()
        assert not literal_secrets(text), f"{path.relative_to(REPO)}: {literal_secrets(text)}"
        if path.suffix in (".yaml", ".yml"):
            kinds = {d.get("kind") for d in yaml.safe_load_all(text) if isinstance(d, dict)}
            assert "Secret" not in kinds, f"{path.relative_to(REPO)} commits a Secret"
    # What gen-secrets.sh writes is ignored by git.
    for name in ("postgres.env", "mlflow-server.env", "auth_config.ini", "service.env"):
        ignored = run("git", "-C", str(REPO), "check-ignore", "-q", f"infra/k8s/base/secrets/{name}")
        assert ignored.returncode == 0, f"infra/k8s/base/secrets/{name} is not git-ignored"


def test_gen_secrets_is_random_and_keeps_existing_files(infra_copy: Path) -> None:
    secrets = infra_copy / "k8s" / "base" / "secrets"
    before = {p.name: p.read_text() for p in secrets.glob("*.env")}
    assert run("bash", str(infra_copy / "gen-secrets.sh")).returncode == 0
    assert before == {p.name: p.read_text() for p in secrets.glob("*.env")}
    values = {line.split("=", 1)[1] for text in before.values() for line in text.splitlines()}
    assert len({v for v in values if re.fullmatch(r"[0-9a-f]{64}", v)}) >= 8
    assert run("bash", str(infra_copy / "gen-secrets.sh"), "--force").returncode == 0
    after = {p.name: p.read_text() for p in secrets.glob("*.env")}
    assert all(after[name] != before[name] for name in before if name != "postgres.env")
    assert after["postgres.env"] == before["postgres.env"]  # database passwords: never rotated by --force
    ini = (secrets / "auth_config.ini").read_text()
    assert "default_permission = READ" in ini and "admin_username = admin" in ini


def test_generated_secrets_are_what_the_pods_read(docs: dict[str, list[dict[str, Any]]]) -> None:
    for items in docs.values():
        secrets = {
            d["metadata"]["name"]: set((d.get("data") or {}).keys()) for d in items if d["kind"] == "Secret"
        }

        def keys(prefix: str, secrets: dict[str, set[str]] = secrets) -> set[str]:
            return next(v for k, v in secrets.items() if k == prefix or k.startswith(prefix + "-"))

        assert {
            "MLFLOW_BACKEND_STORE_URI",
            "MLFLOW_AUTH_ADMIN_PASSWORD",
            "MLFLOW_FLASK_SERVER_SECRET_KEY",
        } <= keys("mlflow-server")
        assert {"PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_API_AUTH_STRING"} <= keys(
            "prefect-server"
        )
        assert keys("prefect-client") == {"PREFECT_API_AUTH_STRING"}
        assert (
            keys("mlflow-reader")
            == keys("mlflow-trainer")
            == {
                "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD",
            }
        )
        # `tuneloop serve --host 0.0.0.0` refuses to start without a token: the service Secret has it.
        # One token per use (metrics read-only, classify, feedback): no all-scopes token in the cluster.
        service = keys("service")
        assert {"TUNELOOP_SERVE_SECRET", *SCOPED_TOKENS} <= service and "TUNELOOP_API_TOKEN" not in service
        assert keys("metrics-reader") == {"TUNELOOP_METRICS_TOKEN"}
        # Names the work-pool templates and the ServiceMonitor use cannot carry kustomize's hash suffix.
        for name in (*FIXED_SECRETS, *RELOADED_SECRETS):
            assert name in secrets, f"Secret {name} must keep its plain name"
        assert secrets["tuneloop-tenants"] == {"tenants.yaml"}


# ---------------------------------------------------------------------------------------------
# The properties issue 11 found missing.


def test_mlflow_server_runs_basic_auth_on_s3_with_allowed_hosts(
    docs: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, items in docs.items():
        spec = find(items, "Deployment", "mlflow")["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        argv = container["command"] + container["args"]
        assert argv[:2] == ["mlflow", "server"]
        assert "--app-name=basic-auth" in argv and "--serve-artifacts" in argv and "--host=0.0.0.0" in argv
        assert any(a.startswith("--artifacts-destination=s3://") for a in argv)
        (hosts,) = [
            a.removeprefix("--allowed-hosts=").split(",") for a in argv if a.startswith("--allowed-hosts=")
        ]
        config = find(items, "ConfigMap", "tuneloop-config")["data"]
        tracking_host = config["TUNELOOP_TRACKING_URI"].split("://")[1]
        for host in (*MLFLOW_CLIENT_HOSTS, tracking_host):
            assert host in hosts, f"{overlay}: MLflow would refuse Host {host}"
        env = {e["name"]: e for e in container["env"]}
        assert "minio" in env["MLFLOW_S3_ENDPOINT_URL"]["value"]
        auth_path = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert str(Path(auth_path).parent) in mounts
        # The store URI (with its password) comes from the Secret, not from the manifest.
        assert [s["secretRef"]["name"] for s in container["envFrom"]][0].startswith("mlflow-server")
        assert not any("postgresql://" in a for a in argv)
        # The Job that creates the trainer and reader users reads every password from a Secret.
        job = find(items, "Job", "mlflow-users")["spec"]["template"]["spec"]["containers"][0]
        refs = sorted(e["valueFrom"]["secretKeyRef"]["name"] for e in job["env"] if "valueFrom" in e)
        assert [r.split("-")[1] for r in refs] == ["reader", "server", "trainer"], refs


def test_worker_image_has_no_entrypoint() -> None:
    worker = (INFRA / "docker" / "worker.Dockerfile").read_text()
    instructions = [
        line.split()[0].upper() for line in worker.splitlines() if line.strip() and line[0] != "#"
    ]
    assert "ENTRYPOINT" not in instructions, "Prefect's flow-run command would become its arguments"
    for name in ("worker", "service"):
        text = (INFRA / "docker" / f"{name}.Dockerfile").read_text()
        final_stage = text.rsplit("\nFROM ", 1)[1]
        users = re.findall(r"^USER (\S+)", final_stage, re.M)
        assert users and users[-1].split(":")[0] not in ("root", "0"), name
        assert "download.pytorch.org/whl/cpu" in text and "requirements.lock" in text


def test_job_templates_run_prefects_command_with_credentials_by_reference() -> None:
    templates = job_templates()
    assert set(templates) == {"base-job-template.json", "base-job-template-gpu.json"}
    for name, template in templates.items():
        manifest = template["job_configuration"]["job_manifest"]
        pod = manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == "{{ command }}" and "command" not in container, name
        env = {e["name"]: e for e in container["env"]}
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"):
            assert "value" not in env[var] and env[var]["valueFrom"]["secretKeyRef"]["name"], (name, var)
        from_config = ("TUNELOOP_TRACKING_URI", "TUNELOOP_POLICY_PATH", "TUNELOOP_SERVICE_URL")
        from_config += ("PREFECT_API_URL", "TUNELOOP_ROLLOUT_REPLICAS_URL")
        for var in from_config:
            assert env[var]["valueFrom"]["configMapKeyRef"]["name"] == "tuneloop-config", (name, var)
        assert "MLflow" in manifest["metadata"]["annotations"]["tuneloop/state"]
        used = set(re.findall(r"\{\{ (\w+) \}\}", json.dumps(template["job_configuration"])))
        assert used <= set(template["variables"]["properties"]), used - set(
            template["variables"]["properties"]
        )
        assert container["image"].startswith("tuneloop/worker")
        gpu = "nvidia.com/gpu" in container["resources"]["limits"]
        assert gpu == ("gpu" in name)
        assert (pod.get("nodeSelector") == {"nvidia.com/gpu.present": "true"}) == gpu


def test_service_probes_metrics_and_scaling(docs: dict[str, list[dict[str, Any]]]) -> None:
    replicas = {"local": 1, "production": None}  # production: the HPA's
    for overlay, items in docs.items():
        deployment = find(items, "Deployment", "tuneloop-service")
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert container["command"] == ["tuneloop", "serve", "--host", "0.0.0.0", "--port", "3000"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        # kube-prometheus-stack ignores prometheus.io/* annotations: the ServiceMonitor scrapes.
        assert not [k for k in template["metadata"].get("annotations", {}) if k.startswith("prometheus.io/")]
        assert deployment["spec"].get("replicas") == replicas[overlay]
        # The service only reads the registry: it logs in as the READ-only user.
        refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
        assert any(r.startswith("mlflow-reader") for r in refs) and not any("trainer" in r for r in refs)
        assert any(r.startswith("service-") for r in refs)  # its tokens: without one it refuses to start
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/var/lib/tuneloop", "/var/lib/bentoml", "/tmp"} <= mounts
        find(items, "PodDisruptionBudget", "tuneloop-service")
        policy = find(items, "NetworkPolicy", "tuneloop-service")["spec"]
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        assert [p["port"] for r in policy["ingress"] for p in r["ports"]] == [3000]
        egress_ports = {p["port"] for r in policy["egress"] for p in r["ports"]}
        assert egress_ports == {5000, 53}
    hpa = find(docs["production"], "HorizontalPodAutoscaler", "tuneloop-service")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tuneloop-service" and hpa["spec"]["minReplicas"] >= 2
    assert not [d for d in docs["local"] if d["kind"] == "HorizontalPodAutoscaler"]
    images = {c["image"] for _, s in pod_specs(docs["production"]) for c in s["containers"]}
    assert not [i for i in images if i.startswith("tuneloop/")], "production must name a registry"


def test_the_canary_controller_reads_every_replica(docs: dict[str, list[dict[str, Any]]]) -> None:
    """Not whichever pod the load-balanced Service picks per scrape: a headless Service's every pod."""
    from urllib.parse import urlsplit

    for overlay, items in docs.items():
        url = urlsplit(find(items, "ConfigMap", "tuneloop-config")["data"]["TUNELOOP_ROLLOUT_REPLICAS_URL"])
        name, namespace = str(url.hostname).split(".")[:2]
        (service,) = [d for d in items if d["kind"] == "Service" and d["metadata"]["name"] == name]
        assert namespace == "tuneloop" and service["spec"].get("clusterIP") == "None", (overlay, name)
        deployment = find(items, "Deployment", "tuneloop-service")
        assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"], overlay
        assert url.port in [p["targetPort"] for p in service["spec"]["ports"]], overlay


def test_every_container_is_non_root_read_only_with_resources(docs: dict[str, list[dict[str, Any]]]) -> None:
    specs = [(f"{o}:{n}", s) for o, items in docs.items() for n, s in pod_specs(items)]
    specs += [(n, fill_template(t)["spec"]["template"]["spec"]) for n, t in job_templates().items()]
    assert len(specs) >= 16
    for where, spec in specs:
        pod = spec.get("securityContext", {})
        for container in spec["containers"]:
            ctx = {**pod, **container.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, where
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            resources = container["resources"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[part]), (where, part)
            if "readinessProbe" not in container and not where.endswith((".json",)):
                assert "Job/" in where, f"{where}: no probes"


def test_prefect_server_and_worker(docs: dict[str, list[dict[str, Any]]]) -> None:
    for items in docs.values():
        server = find(items, "Deployment", "prefect-server")["spec"]["template"]["spec"]["containers"][0]
        assert server["command"][:3] == ["prefect", "server", "start"]
        assert any(
            s.get("secretRef", {}).get("name", "").startswith("prefect-server") for s in server["envFrom"]
        )
        worker = find(items, "Deployment", "prefect-worker")["spec"]["template"]["spec"]
        command = worker["containers"][0]["command"]
        assert command[:3] == ["prefect", "worker", "start"]
        assert command[command.index("--pool") + 1] == "tuneloop-k8s"
        assert command[command.index("--type") + 1] == "kubernetes"
        assert worker["serviceAccountName"] == "prefect-worker"
        role = find(items, "Role", "prefect-worker")
        grants = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
        assert {("jobs", "create"), ("jobs", "watch"), ("pods", "list"), ("pods/log", "get")} <= grants
        binding = find(items, "RoleBinding", "prefect-worker")
        assert (
            binding["subjects"][0]["name"] == "prefect-worker"
            and binding["roleRef"]["name"] == "prefect-worker"
        )
        postgres = find(items, "StatefulSet", "postgres")
        assert postgres["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
        init = find(items, "ConfigMap", "postgres-init")["data"]
        script = "".join(init.values())
        assert "CREATE DATABASE mlflow" in script and "CREATE DATABASE prefect" in script


WORKER_BUILD = """
import json, sys, uuid
from prefect.client.schemas.objects import FlowRun
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

out = {}
for path in sys.argv[1:]:
    template = json.load(open(path))
    config = run_coro_as_sync(
        KubernetesWorkerJobConfiguration.from_template_and_values(template, {"env": {"EXTRA": "1"}})
    )
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="a-run"))
    out[path] = config.job_manifest
print(json.dumps(out))
"""


def test_prefect_kubernetes_worker_builds_jobs_from_the_templates(tmp_path: Path) -> None:
    """The real worker code (prefect-kubernetes, in the lock's `server` extra) accepts both templates,
    puts Prefect's flow-run command in `args` (no `command`, no ENTRYPOINT in the image to prefix it)
    and keeps the template's Secret references next to the variables Prefect adds."""
    paths = [str(INFRA / "prefect" / name) for name in job_templates()]
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        # A worker's API, so Prefect starts no ephemeral server; nothing is sent to it.
        "PREFECT_API_URL": "http://127.0.0.1:9/api",
    }
    proc = subprocess.run(
        [sys.executable, "-c", WORKER_BUILD, *paths], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"][:3] == ["prefect", "flow-run", "execute"] and "command" not in container
        env_by_name = {e["name"]: e for e in container["env"]}
        assert env_by_name["EXTRA"]["value"] == "1" and "PREFECT__FLOW_RUN_ID" in env_by_name
        secret = env_by_name["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "mlflow-trainer", "key": "MLFLOW_TRACKING_PASSWORD"}
        assert job["metadata"]["namespace"] == "tuneloop" and pod["serviceAccountName"] == "tuneloop-flow"
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) == path.endswith("-gpu.json")
