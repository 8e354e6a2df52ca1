"""infra/gen-secrets.sh and the Secrets made from its files; fast, no cluster.

The script runs in a temporary copy of infra/ (never on the repository's own secret files). What is
checked: a value that lives in more than one file is the same in each, also after a re-run that
finds only some files (the missing ones take the kept ones' values); `--force` rotates what nothing
stateful holds and keeps the PostgreSQL passwords and MLflow's admin password; MLflow's S3 user is
its own, allowed into the bucket `mlflow` only (Job minio-bucket); and the Secrets that a rotation
must restart pods for carry kustomize's hash suffix, the ones named from outside kustomize do not.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
HEX = re.compile(r"[0-9a-f]{64}")

# What nothing stateful holds: --force gives each a fresh value. (file, key)
ROTATED = [
    ("minio.env", "MINIO_ROOT_PASSWORD"),
    ("mlflow-server.env", "MLFLOW_FLASK_SERVER_SECRET_KEY"),
    ("mlflow-server.env", "AWS_SECRET_ACCESS_KEY"),
    ("mlflow-trainer.env", "MLFLOW_TRACKING_PASSWORD"),
    ("mlflow-reader.env", "MLFLOW_TRACKING_PASSWORD"),
    ("prefect-server.env", "PREFECT_SERVER_API_AUTH_STRING"),
    ("prefect-client.env", "PREFECT_API_AUTH_STRING"),
    ("service.env", "TUNELOOP_SERVE_SECRET"),
    ("service.env", "TUNELOOP_METRICS_TOKEN"),
    ("service.env", "TUNELOOP_CLASSIFY_TOKEN"),
    ("service.env", "TUNELOOP_FEEDBACK_TOKEN"),
    ("metrics-reader.env", "TUNELOOP_METRICS_TOKEN"),
]
# What a database holds once used: --force keeps it.
STATEFUL = [
    ("postgres.env", "POSTGRES_PASSWORD"),
    ("postgres.env", "MLFLOW_DB_PASSWORD"),
    ("postgres.env", "PREFECT_DB_PASSWORD"),
    ("mlflow-server.env", "MLFLOW_AUTH_ADMIN_PASSWORD"),
]
# Values that live in more than one file (one holder of each named).
SHARED = [
    ("postgres.env", "MLFLOW_DB_PASSWORD"),
    ("postgres.env", "PREFECT_DB_PASSWORD"),
    ("prefect-server.env", "PREFECT_SERVER_API_AUTH_STRING"),
    ("service.env", "TUNELOOP_METRICS_TOKEN"),
]
FILES = {
    "postgres.env": {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD"},
    "minio.env": {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
    "mlflow-server.env": {
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    },
    "mlflow-trainer.env": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    "mlflow-reader.env": {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    "prefect-server.env": {"PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_API_AUTH_STRING"},
    "prefect-client.env": {"PREFECT_API_AUTH_STRING"},
    "service.env": {
        "TUNELOOP_SERVE_SECRET",
        "TUNELOOP_METRICS_TOKEN",
        "TUNELOOP_CLASSIFY_TOKEN",
        "TUNELOOP_FEEDBACK_TOKEN",
    },
    "metrics-reader.env": {"TUNELOOP_METRICS_TOKEN"},
}
S3_ACTIONS = {
    "s3:GetObject",
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:ListBucket",
    "s3:GetBucketLocation",
    "s3:ListMultipartUploadParts",
    "s3:AbortMultipartUpload",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def infra(tmp_path: Path) -> Path:
    """A copy of infra/ without secret files, gen-secrets.sh run once in it."""
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy, ignore=shutil.ignore_patterns("*.env", "auth_config.ini"))
    gen(copy)
    return copy


def gen(infra: Path, *args: str) -> str:
    proc = run("bash", str(infra / "gen-secrets.sh"), *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def secrets_dir(infra: Path) -> Path:
    return infra / "k8s" / "base" / "secrets"


def read(infra: Path) -> dict[str, dict[str, str]]:
    """file name -> {key: value}; auth_config.ini as {option: value} (`key = value` lines)."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted(secrets_dir(infra).iterdir()):
        if path.suffix == ".env":
            pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line]
        elif path.name == "auth_config.ini":
            pairs = [line.split(" = ", 1) for line in path.read_text().splitlines() if " = " in line]
        else:
            continue
        out[path.name] = {k: v for k, v in pairs}
    return out


def uri_password(uri: str, user: str) -> str:
    match = re.fullmatch(rf"postgresql(\+asyncpg)?://{user}:([^@]+)@[^/]+/{user}", uri)
    assert match, uri
    return match.group(2)


def assert_consistent(files: dict[str, dict[str, str]]) -> None:
    """Every value that lives in more than one file is the same in each."""
    assert {name: set(keys) for name, keys in files.items() if name != "auth_config.ini"} == FILES
    pg = files["postgres.env"]
    mlflow = files["mlflow-server.env"]
    assert uri_password(mlflow["MLFLOW_BACKEND_STORE_URI"], "mlflow") == pg["MLFLOW_DB_PASSWORD"]
    assert uri_password(files["auth_config.ini"]["database_uri"], "mlflow") == pg["MLFLOW_DB_PASSWORD"]
    prefect_url = files["prefect-server.env"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert uri_password(prefect_url, "prefect") == pg["PREFECT_DB_PASSWORD"]
    assert (
        files["prefect-server.env"]["PREFECT_SERVER_API_AUTH_STRING"]
        == files["prefect-client.env"]["PREFECT_API_AUTH_STRING"]
    )
    assert (
        files["service.env"]["TUNELOOP_METRICS_TOKEN"]
        == files["metrics-reader.env"]["TUNELOOP_METRICS_TOKEN"]
    )
    # MLflow has a MinIO user of its own, not the root user.
    minio = files["minio.env"]
    assert mlflow["AWS_ACCESS_KEY_ID"] == "mlflow-artifacts" != minio["MINIO_ROOT_USER"]
    assert mlflow["AWS_SECRET_ACCESS_KEY"] != minio["MINIO_ROOT_PASSWORD"]
    # The service's four values are four different random values.
    service = files["service.env"]
    assert len(set(service.values())) == 4 and all(HEX.fullmatch(v) for v in service.values())


def test_generated_values_agree_across_files(infra: Path) -> None:
    files = read(infra)
    assert_consistent(files)
    assert set(files) == {*FILES, "auth_config.ini"}
    secrets = [v for name, key in ROTATED + STATEFUL for v in [files[name][key]]]
    assert all(HEX.fullmatch(v.removeprefix("admin:")) for v in secrets)


@pytest.mark.parametrize(
    "missing",
    [
        # The copies: the other file of each shared value is kept.
        ["prefect-client.env", "metrics-reader.env", "postgres.env"],
        # The originals: the database URIs, the server's auth string, the service's token.
        ["prefect-server.env", "service.env", "mlflow-server.env", "auth_config.ini"],
        # The database passwords only inside URIs (auth_config.ini, prefect-server.env).
        ["postgres.env", "mlflow-server.env", "prefect-client.env", "metrics-reader.env"],
    ],
)
def test_rerun_writes_missing_files_that_agree_with_the_kept_ones(infra: Path, missing: list[str]) -> None:
    before = read(infra)
    for name in missing:
        (secrets_dir(infra) / name).unlink()
    gen(infra)
    after = read(infra)
    for name in set(before) - set(missing):
        assert after[name] == before[name], f"{name} was kept, yet changed"
    # Each shared value had a kept holder: it comes back as it was, in every file that holds it.
    for name, key in SHARED:
        assert after[name][key] == before[name][key], (name, key)
    assert_consistent(after)


@pytest.mark.parametrize("flag", ["--force", "--rotate"])
def test_force_rotates_what_nothing_stateful_holds(infra: Path, flag: str) -> None:
    before = read(infra)
    out = gen(infra, flag)
    after = read(infra)
    for name, key in ROTATED:
        assert after[name][key] != before[name][key], f"{flag} kept {name} {key}"
    for name, key in STATEFUL:
        assert after[name][key] == before[name][key], f"{flag} rotated {name} {key}"
    # Names are not secrets: kept.
    assert after["minio.env"]["MINIO_ROOT_USER"] == before["minio.env"]["MINIO_ROOT_USER"]
    assert after["mlflow-server.env"]["AWS_ACCESS_KEY_ID"] == before["mlflow-server.env"]["AWS_ACCESS_KEY_ID"]
    assert after["auth_config.ini"] == before["auth_config.ini"]
    assert_consistent(after)
    # How to change the four kept ones by hand, and how to re-run the Jobs that re-set users.
    for role in ("postgres", "mlflow", "prefect"):
        assert f"ALTER ROLE {role} PASSWORD" in out
    assert 'update_user_password("admin"' in out
    assert "delete job minio-bucket mlflow-users" in out


def test_force_keeps_the_stateful_values_even_when_only_a_copy_holds_them(infra: Path) -> None:
    """postgres.env lost: --force still takes the database passwords from the URIs."""
    before = read(infra)
    (secrets_dir(infra) / "postgres.env").unlink()
    gen(infra, "--force")
    after = read(infra)
    for key in ("MLFLOW_DB_PASSWORD", "PREFECT_DB_PASSWORD"):
        assert after["postgres.env"][key] == before["postgres.env"][key]
    assert_consistent(after)


def test_rerun_migrates_files_of_the_earlier_layout(infra: Path) -> None:
    """Earlier versions gave MLflow MinIO's root keys and the service one TUNELOOP_API_TOKEN."""
    secrets = secrets_dir(infra)
    files = read(infra)
    minio = files["minio.env"]
    mlflow = files["mlflow-server.env"]
    old_mlflow = {**mlflow, "AWS_ACCESS_KEY_ID": minio["MINIO_ROOT_USER"]}
    old_mlflow["AWS_SECRET_ACCESS_KEY"] = minio["MINIO_ROOT_PASSWORD"]
    (secrets / "mlflow-server.env").write_text("".join(f"{k}={v}\n" for k, v in old_mlflow.items()))
    old_service = files["service.env"]["TUNELOOP_SERVE_SECRET"]
    (secrets / "service.env").write_text(
        f"TUNELOOP_SERVE_SECRET={old_service}\nTUNELOOP_API_TOKEN={'0' * 64}\n"
    )
    (secrets / "metrics-reader.env").unlink()
    gen(infra)
    after = read(infra)
    assert_consistent(after)
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert after["mlflow-server.env"][key] == mlflow[key]
    assert after["minio.env"] == minio
    assert after["service.env"]["TUNELOOP_SERVE_SECRET"] == old_service


# ---------------------------------------------------------------------------------------------
# Job minio-bucket: MLflow's own MinIO user, allowed into the bucket `mlflow` only.


def minio_bucket_job() -> dict[str, Any]:
    docs = yaml.safe_load_all((INFRA / "k8s" / "base" / "minio.yaml").read_text())
    (job,) = [d for d in docs if d and d["kind"] == "Job" and d["metadata"]["name"] == "minio-bucket"]
    return job


def test_minio_bucket_policy_names_only_the_mlflow_bucket() -> None:
    (container,) = minio_bucket_job()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    policy = json.loads(env["POLICY"]["value"])
    statements = policy["Statement"]
    assert policy["Version"] == "2012-10-17" and statements
    actions = {a for s in statements for a in s["Action"]}
    resources = {r for s in statements for r in s["Resource"]}
    assert all(s["Effect"] == "Allow" for s in statements)
    assert actions == S3_ACTIONS
    assert resources == {"arn:aws:s3:::mlflow", "arn:aws:s3:::mlflow/*"}
    # Bucket-level actions on the bucket, object-level ones on its objects.
    for s in statements:
        for action in s["Action"]:
            bucket_level = action in ("s3:ListBucket", "s3:GetBucketLocation")
            assert s["Resource"] == (["arn:aws:s3:::mlflow"] if bucket_level else ["arn:aws:s3:::mlflow/*"])


def test_minio_bucket_job_creates_the_user_from_mlflows_secret_with_root_from_minios() -> None:
    job = minio_bucket_job()
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    refs = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "valueFrom" in e
    }
    assert refs == {
        "MINIO_ROOT_USER": ("minio", "MINIO_ROOT_USER"),
        "MINIO_ROOT_PASSWORD": ("minio", "MINIO_ROOT_PASSWORD"),
        "MLFLOW_S3_ACCESS_KEY": ("mlflow-server", "AWS_ACCESS_KEY_ID"),
        "MLFLOW_S3_SECRET_KEY": ("mlflow-server", "AWS_SECRET_ACCESS_KEY"),
    }
    image = container["image"]
    assert re.fullmatch(r"minio/mc:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", image), image
    script = container["command"][-1]
    assert "--config-dir /tmp/mc" in script
    for step in (
        "mc mb --ignore-existing root/mlflow",
        "mc admin policy create root mlflow-artifacts",
        'mc admin user add root "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"',
        'mc admin policy attach root mlflow-artifacts --user "$MLFLOW_S3_ACCESS_KEY"',
        "already in effect",  # a re-run finds the policy attached: not an error
    ):
        assert step in script, step
    assert re.search(r"until mc alias set root .*\n.*mc admin info root", script), "no wait for MinIO"
    # mc runs as uid 10001 on a read-only root: its config goes to the /tmp emptyDir.
    assert pod["restartPolicy"] == "OnFailure" and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert {"name": mount["name"], "emptyDir": {}} in pod["volumes"]
    skips = [v for k, v in job["metadata"]["annotations"].items() if k.startswith("checkov.io/skip")]
    assert skips and all(len(v.split("=", 1)[1]) > 40 for v in skips)


def test_tenants_file_is_written_empty_once_and_never_rewritten(infra: Path) -> None:
    """The Secret tuneloop-tenants' file (serve/tenants.py reads it): no tenant at first; entries
    `tuneloop tenant add` made survive a re-run and --force (a rewrite would lock their callers out)."""
    path = secrets_dir(infra) / "tenants.yaml"
    assert yaml.safe_load(path.read_text()) == {"tenants": []}
    made = "tenants:\n- id: acme\n  token_sha256: '" + "ab" * 32 + "'\n  projects: [default]\n"
    path.write_text(made)
    assert "kept" in gen(infra) and path.read_text() == made
    assert "tenants.yaml is kept" in gen(infra, "--force") and path.read_text() == made


# ---------------------------------------------------------------------------------------------
# The Secrets kustomize makes from the files (local overlay).


def test_rotated_secrets_restart_pods_and_fixed_names_stay_fixed(infra: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: run infra/check-tools.sh")
    proc = run(kubectl, "kustomize", str(infra / "k8s" / "overlays" / "local"))
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}

    def named(base: str) -> dict[str, Any]:
        (hit,) = [s for n, s in secrets.items() if re.fullmatch(rf"{base}-[a-z0-9]{{10}}", n)]
        return hit

    for fixed in ("metrics-reader", "prefect-client", "mlflow-trainer", "tuneloop-tenants"):
        assert fixed in secrets, f"Secret {fixed} must keep its plain name"
    assert set(secrets["tuneloop-tenants"]["data"]) == {"tenants.yaml"}
    for hashed in ("service", "prefect-worker-auth"):
        assert hashed not in secrets, f"Secret {hashed} must carry a hash suffix"
        named(hashed)
    service = named("service")["data"]
    assert set(service) == FILES["service.env"]
    assert secrets["metrics-reader"]["data"] == {"TUNELOOP_METRICS_TOKEN": service["TUNELOOP_METRICS_TOKEN"]}
    assert named("prefect-worker-auth")["data"] == secrets["prefect-client"]["data"]
    assert set(named("mlflow-server")["data"]) == FILES["mlflow-server.env"]
    # The service Deployment reads the hashed Secret, so a new value changes its pod template.
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "tuneloop-service"
    ]
    refs = [
        s["secretRef"]["name"]
        for c in deployment["spec"]["template"]["spec"]["containers"]
        for s in c.get("envFrom", [])
        if "secretRef" in s
    ]
    assert named("service")["metadata"]["name"] in refs
