#!/usr/bin/env bash
# Writes the env files and the MLflow auth config that infra/k8s/base/kustomization.yaml turns into
# Secrets (secretGenerator), with random values. Never committed: .gitignore excludes them. An
# operator with a secret manager writes the same files (same keys) from it instead of running this;
# k8s/base/secrets/README.md lists them.
#
#   infra/gen-secrets.sh           write the missing files, keep the existing ones
#   infra/gen-secrets.sh --force   (alias --rotate) rewrite every file with fresh values for what
#                                  nothing stateful holds; keep the four values that are
#
# Several values live in more than one file (a database password in postgres.env and inside a
# connection URI, Prefect's auth string in the server's and the clients' file, the service's metrics
# token in service.env and metrics-reader.env). Every one of them is read back from whichever existing
# file holds it, so a file written now agrees with the files kept.
#
# Stateful, never rotated here (their value lives on in a database once used; new values in the files
# alone would break logins; --force prints how to change each by hand):
#   POSTGRES_PASSWORD, MLFLOW_DB_PASSWORD, PREFECT_DB_PASSWORD  set once by PostgreSQL's init script
#   MLFLOW_AUTH_ADMIN_PASSWORD   read by MLflow only on its first start, then in its auth tables
# Rotated by --force (each is read fresh on a pod's start, or re-set by a Job):
#   Prefect's auth string (server and clients together), the service's HMAC key and its three
#   tokens (the metrics one in metrics-reader.env too), MLflow's Flask secret key, the trainer and
#   reader passwords (Job mlflow-users re-passwords them), MinIO's root password (MinIO reads it on
#   start) and the MLflow S3 user's secret key (Job minio-bucket re-sets it).
# Written once, empty, and never rewritten (not even by --force): tenants.yaml, the service's tenants
# (tokens as sha256 hashes). `tuneloop tenant add|rotate|remove` change it, with
# TUNELOOP_TENANTS_FILE pointing at it; each tenant's token is rotated by `tuneloop tenant rotate ID`.
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/k8s/base/secrets"
force=0
case "${1:-}" in
  "") ;;
  --force | --rotate) force=1 ;;
  -h | --help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--force|--rotate]" >&2; exit 2 ;;
esac
mkdir -p "$out"
umask 077

# 32 random bytes as 64 hex characters: no character needs quoting in a URI, an .ini or an env file.
rand() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

# keep NAME FILE SED [FILE SED]...: when an existing FILE holds the value (what `sed -n SED` prints
# from it), NAME takes it instead of its fresh value; the first file that holds it wins, and a
# warning names files that disagree (left as they are: which one is right is for the operator).
keep() {
  local name=$1 value="" from="" v
  shift
  while (($#)); do
    v=""
    [[ -e "$out/$1" ]] && v=$(sed -n "$2" "$out/$1") && v=${v%%$'\n'*}
    if [[ -n $v && -z $value ]]; then
      value=$v from=$1
    elif [[ -n $v && $v != "$value" ]]; then
      echo "warning: $1 and $from disagree on $name; files written now take $from's" >&2
    fi
    shift 2
  done
  if [[ -n $value ]]; then printf -v "$name" '%s' "$value"; fi
}

# Fresh values first; then, below, the ones existing files already hold.
pg_super=$(rand) mlflow_db=$(rand) prefect_db=$(rand) mlflow_admin=$(rand)
minio_user=tuneloop-minio minio_pass=$(rand)
s3_user=mlflow-artifacts s3_secret=$(rand)
flask_key=$(rand) trainer=$(rand) reader=$(rand) prefect_auth=admin:$(rand)
serve_hmac=$(rand) metrics_token=$(rand) classify_token=$(rand) feedback_token=$(rand)
db=postgres.tuneloop.svc.cluster.local:5432

# Stateful: kept even with --force.
keep pg_super postgres.env 's/^POSTGRES_PASSWORD=//p'
keep mlflow_db postgres.env 's/^MLFLOW_DB_PASSWORD=//p' \
  mlflow-server.env 's|^MLFLOW_BACKEND_STORE_URI=.*//mlflow:\([^@]*\)@.*|\1|p' \
  auth_config.ini 's|^database_uri = .*//mlflow:\([^@]*\)@.*|\1|p'
keep prefect_db postgres.env 's/^PREFECT_DB_PASSWORD=//p' \
  prefect-server.env 's|^PREFECT_API_DATABASE_CONNECTION_URL=.*//prefect:\([^@]*\)@.*|\1|p'
keep mlflow_admin mlflow-server.env 's/^MLFLOW_AUTH_ADMIN_PASSWORD=//p'
if compgen -G "$out/*.env" >/dev/null; then
  # Only one file holds these two: once it is lost, a cluster that already started keeps the old one.
  [[ -e "$out/postgres.env" ]] \
    || echo "warning: no postgres.env: new POSTGRES_PASSWORD; an initialised PostgreSQL keeps its old one" >&2
  [[ -e "$out/mlflow-server.env" ]] \
    || echo "warning: no mlflow-server.env: new MLFLOW_AUTH_ADMIN_PASSWORD; a started MLflow keeps its old one" >&2
fi
# Names, not secrets: kept too (an operator may have chosen others).
keep minio_user minio.env 's/^MINIO_ROOT_USER=//p'
keep s3_user mlflow-server.env 's/^AWS_ACCESS_KEY_ID=//p'
stale=""
if [[ $s3_user == "$minio_user" ]]; then
  # Written by an earlier version of this script: MLflow used MinIO's root user. It gets its own.
  s3_user=mlflow-artifacts stale=mlflow-server.env
fi
if ((!force)); then
  keep minio_pass minio.env 's/^MINIO_ROOT_PASSWORD=//p'
  [[ -n $stale ]] || keep s3_secret mlflow-server.env 's/^AWS_SECRET_ACCESS_KEY=//p'
  keep flask_key mlflow-server.env 's/^MLFLOW_FLASK_SERVER_SECRET_KEY=//p'
  keep trainer mlflow-trainer.env 's/^MLFLOW_TRACKING_PASSWORD=//p'
  keep reader mlflow-reader.env 's/^MLFLOW_TRACKING_PASSWORD=//p'
  keep prefect_auth prefect-server.env 's/^PREFECT_SERVER_API_AUTH_STRING=//p' \
    prefect-client.env 's/^PREFECT_API_AUTH_STRING=//p'
  keep serve_hmac service.env 's/^TUNELOOP_SERVE_SECRET=//p'
  keep metrics_token service.env 's/^TUNELOOP_METRICS_TOKEN=//p' \
    metrics-reader.env 's/^TUNELOOP_METRICS_TOKEN=//p'
  keep classify_token service.env 's/^TUNELOOP_CLASSIFY_TOKEN=//p'
  keep feedback_token service.env 's/^TUNELOOP_FEEDBACK_TOKEN=//p'
fi

# write FILE: stdin to $out/FILE unless it exists (or --force). An existing env file that lacks a key
# written here (an older layout) is rewritten: its other values were read back above.
write() {
  local content missing=""
  content=$(cat)
  if [[ -e "$out/$1" && $force == 0 && $stale == "$1" ]]; then
    missing=" user of its own for MLflow (it used MinIO's root user)"
  elif [[ -e "$out/$1" && $force == 0 ]]; then
    if [[ $1 == *.env ]]; then
      local key
      for key in $(printf '%s\n' "$content" | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
        [[ -n $(sed -n "s/^$key=//p" "$out/$1") ]] || missing+=" $key"
      done
    fi
    if [[ -z $missing ]]; then echo "kept      $out/$1"; return; fi
  fi
  printf '%s\n' "$content" >"$out/$1"
  if [[ -n $missing ]]; then echo "rewritten $out/$1 (it had no$missing)"; else echo "written   $out/$1"; fi
}

write postgres.env <<END
POSTGRES_PASSWORD=$pg_super
MLFLOW_DB_PASSWORD=$mlflow_db
PREFECT_DB_PASSWORD=$prefect_db
END
# MinIO's root user: only MinIO itself and the Job minio-bucket (which creates the bucket and the
# user below) use it.
write minio.env <<END
MINIO_ROOT_USER=$minio_user
MINIO_ROOT_PASSWORD=$minio_pass
END
# AWS_*: MLflow's own MinIO user, allowed into the bucket `mlflow` only (Job minio-bucket creates it
# with these keys and re-sets its secret on every run).
write mlflow-server.env <<END
MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:$mlflow_db@$db/mlflow
MLFLOW_AUTH_ADMIN_PASSWORD=$mlflow_admin
MLFLOW_FLASK_SERVER_SECRET_KEY=$flask_key
AWS_ACCESS_KEY_ID=$s3_user
AWS_SECRET_ACCESS_KEY=$s3_secret
END
# MLflow basic-auth (MLFLOW_AUTH_CONFIG_PATH): users and permissions live in the same PostgreSQL
# database as the tracking store (their own tables, alembic_version_auth); every user MLflow does not
# know better reads only. The admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD above.
write auth_config.ini <<END
[mlflow]
default_permission = READ
database_uri = postgresql://mlflow:$mlflow_db@$db/mlflow
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
END
# The two MLflow users the cluster's processes log in as (created after the first start:
# infra/README.md): flow pods write runs and versions, the service only reads the registry.
write mlflow-trainer.env <<END
MLFLOW_TRACKING_USERNAME=trainer
MLFLOW_TRACKING_PASSWORD=$trainer
END
write mlflow-reader.env <<END
MLFLOW_TRACKING_USERNAME=reader
MLFLOW_TRACKING_PASSWORD=$reader
END
write prefect-server.env <<END
PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:$prefect_db@$db/prefect
PREFECT_SERVER_API_AUTH_STRING=$prefect_auth
END
# Read by two Secrets: prefect-client (fixed name, for flow-run Jobs) and prefect-worker-auth
# (hashed, for the worker Deployment, so that a rotation restarts it).
write prefect-client.env <<END
PREFECT_API_AUTH_STRING=$prefect_auth
END
# The service: one HMAC key for request ids shared by every replica (feedback may reach another
# replica than the one that answered), and one bearer token per scope: /metrics, /classify, /feedback.
write service.env <<END
TUNELOOP_SERVE_SECRET=$serve_hmac
TUNELOOP_METRICS_TOKEN=$metrics_token
TUNELOOP_CLASSIFY_TOKEN=$classify_token
TUNELOOP_FEEDBACK_TOKEN=$feedback_token
END
# The metrics token alone, for whoever scrapes /metrics (flow-run Jobs, a Prometheus ServiceMonitor):
# the Secret metrics-reader, fixed name.
write metrics-reader.env <<END
TUNELOOP_METRICS_TOKEN=$metrics_token
END
# The tenants: the Secret tuneloop-tenants, mounted into the service (TUNELOOP_TENANTS_FILE). No
# tenant to begin with (the scoped tokens above still open the default project's routes). Kept as
# it is whatever the flags: its entries are made by `tuneloop tenant`, and a rewrite would drop them.
if [[ -e "$out/tenants.yaml" ]]; then
  echo "kept      $out/tenants.yaml"
else
  printf '%s\n' "tenants: []" >"$out/tenants.yaml"
  echo "written   $out/tenants.yaml"
fi

((force)) || exit 0
cat <<'END'

Rotated: Prefect's auth string, the service's HMAC key and tokens, MLflow's Flask secret key, the
trainer and reader passwords, MinIO's root password and MLflow's S3 secret key. To apply (a Job's
pod template cannot change, and these two re-set the MLflow users and the MinIO user):
  kubectl -n tuneloop delete job minio-bucket mlflow-users --ignore-not-found
  kubectl apply -k infra/k8s/overlays/local        # or overlays/production
Pods reading a fixed-name Secret (prefect-client, mlflow-trainer, metrics-reader: flow-run Jobs)
get the new values when they next start. tenants.yaml is kept: rotate a tenant's token with
  TUNELOOP_TENANTS_FILE=infra/k8s/base/secrets/tenants.yaml tuneloop tenant rotate ID
and apply as above (the service re-reads the Secret tuneloop-tenants without a restart).

Kept: the values a database holds. To change one, set it there first, then write the same value
into the files named and apply as above (NEW: e.g. `od -An -N32 -tx1 /dev/urandom | tr -d ' \n'`).
  POSTGRES_PASSWORD (postgres.env):
    kubectl -n tuneloop exec -it postgres-0 -- psql -U postgres -c "ALTER ROLE postgres PASSWORD 'NEW'"
  MLFLOW_DB_PASSWORD (postgres.env, and inside MLFLOW_BACKEND_STORE_URI in mlflow-server.env and
  database_uri in auth_config.ini):
    kubectl -n tuneloop exec -it postgres-0 -- psql -U postgres -c "ALTER ROLE mlflow PASSWORD 'NEW'"
  PREFECT_DB_PASSWORD (postgres.env, and inside PREFECT_API_DATABASE_CONNECTION_URL in
  prefect-server.env):
    kubectl -n tuneloop exec -it postgres-0 -- psql -U postgres -c "ALTER ROLE prefect PASSWORD 'NEW'"
  MLFLOW_AUTH_ADMIN_PASSWORD (mlflow-server.env; the Job mlflow-users logs in with it): as admin,
  with the current one, through `kubectl -n tuneloop port-forward svc/mlflow 5000:5000`:
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD="$(current one)" .venv/bin/python -c \
      'import mlflow.server as s; s.get_app_client("basic-auth", "http://localhost:5000").update_user_password("admin", "NEW")'
END
