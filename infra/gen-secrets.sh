#!/usr/bin/env bash
# Writes the env files and the MLflow auth config that infra/k8s/base/kustomization.yaml turns into
# Secrets (secretGenerator), with fresh random values. Never committed: .gitignore excludes them.
# Idempotent: existing files are kept (rotating a database password means changing it in PostgreSQL
# too); pass --force to overwrite every file. An operator with a secret manager writes the same
# files (same keys) from it instead of running this.
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/k8s/base/secrets"
force=0
[[ "${1:-}" == "--force" ]] && force=1
mkdir -p "$out"
umask 077

# 32 random bytes as 64 hex characters: no character needs quoting in a URI, an .ini or an env file.
rand() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

write() {  # write FILE: stdin to $out/FILE unless it exists (or --force)
  if [[ -e "$out/$1" && $force == 0 ]]; then cat >/dev/null; echo "kept    $out/$1"; return; fi
  cat >"$out/$1"; echo "written $out/$1"
}

pg_super=$(rand) mlflow_db=$(rand) prefect_db=$(rand)
minio_user=tuneloop-minio minio_pass=$(rand)
mlflow_admin=$(rand) flask_key=$(rand) trainer=$(rand) reader=$(rand) prefect_auth=$(rand)
serve_hmac=$(rand) api_token=$(rand)
db=postgres.tuneloop.svc.cluster.local:5432
[[ -e "$out/postgres.env" && $force == 0 ]] && {
  # Keep the URIs below consistent with passwords PostgreSQL already has.
  mlflow_db=$(sed -n 's/^MLFLOW_DB_PASSWORD=//p' "$out/postgres.env")
  prefect_db=$(sed -n 's/^PREFECT_DB_PASSWORD=//p' "$out/postgres.env")
}

write postgres.env <<END
POSTGRES_PASSWORD=$pg_super
MLFLOW_DB_PASSWORD=$mlflow_db
PREFECT_DB_PASSWORD=$prefect_db
END
write minio.env <<END
MINIO_ROOT_USER=$minio_user
MINIO_ROOT_PASSWORD=$minio_pass
END
write mlflow-server.env <<END
MLFLOW_BACKEND_STORE_URI=postgresql://mlflow:$mlflow_db@$db/mlflow
MLFLOW_AUTH_ADMIN_PASSWORD=$mlflow_admin
MLFLOW_FLASK_SERVER_SECRET_KEY=$flask_key
AWS_ACCESS_KEY_ID=$minio_user
AWS_SECRET_ACCESS_KEY=$minio_pass
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
PREFECT_SERVER_API_AUTH_STRING=admin:$prefect_auth
END
write prefect-client.env <<END
PREFECT_API_AUTH_STRING=admin:$prefect_auth
END
# The service: one HMAC key for request ids shared by every replica (feedback may reach another
# replica than the one that answered), and the bearer token for its API and /metrics.
write service.env <<END
TUNELOOP_SERVE_SECRET=$serve_hmac
TUNELOOP_API_TOKEN=$api_token
END
