# The platform image: the Prefect worker and every flow run it starts as a Kubernetes Job, and the
# MLflow and Prefect servers (the locked set has mlflow[auth], boto3, asyncpg, prefect-kubernetes:
# the `server` extra). Build from the repository root:
#   docker build -f infra/docker/worker.Dockerfile -t tuneloop/worker:dev .
#   docker build -f infra/docker/worker.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t tuneloop/worker-gpu:dev .
# No ENTRYPOINT, on purpose: Prefect's Kubernetes worker passes the flow-run command as the
# container's args, and an ENTRYPOINT would prefix it (`tuneloop python -m prefect.engine` fails).
# Every Deployment in infra/k8s names its command.
#checkov:skip=CKV_DOCKER_2:Kubernetes ignores a Dockerfile HEALTHCHECK; each Deployment using this image has its own probes (mlflow /health, prefect /api/ready, worker /health) and flow-run Jobs need none.

FROM python:3.11-slim-bookworm AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first and alone from the chosen wheel index: the CPU wheel keeps the image ~2 GB instead of
# ~8 GB of CUDA libraries; `torch==2.13.0` in the lock accepts the local build (+cpu, +cu128).
RUN pip install "torch==2.13.0" --index-url "$TORCH_INDEX"
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install --no-deps /src \
 && python -c "import tuneloop, mlflow, prefect, prefect_kubernetes, boto3, flask_wtf, asyncpg, psycopg2"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    TUNELOOP_HOME=/var/lib/tuneloop TUNELOOP_POLICY_PATH=/app/registry/policy.yaml HOME=/tmp
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp tuneloop \
 && mkdir -p /var/lib/tuneloop && chown 10001:10001 /var/lib/tuneloop
COPY --from=build /opt/venv /opt/venv
# flows/deploy.py registers deployments `from_source` this folder: flow-run pods find the flows here.
WORKDIR /app
COPY flows ./flows
COPY registry ./registry
# The work-pool templates: the worker's init container creates the pool from them (prefect-worker.yaml).
COPY infra/prefect/*.json ./infra/prefect/
USER 10001:10001
CMD ["prefect", "worker", "start", "--pool", "tuneloop-k8s", "--type", "kubernetes"]
