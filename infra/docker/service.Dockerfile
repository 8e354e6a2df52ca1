# The BentoML service (`tuneloop serve`): reads the registry, answers on port 3000. Build from the
# repository root:
#   docker build -f infra/docker/service.Dockerfile -t tuneloop/service:dev .
# CPU image: ONNX Runtime and the CPU torch wheel; TensorRT serving needs a GPU image of its own.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU wheel of torch (the torch backend and tokenizers' conversions need it) keeps the image
# ~2 GB instead of ~8 GB of CUDA libraries; `torch==2.13.0` in the lock accepts the +cpu build.
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install --no-deps /src && python -c "import tuneloop, bentoml, onnxruntime, mlflow"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    BENTOML_DO_NOT_TRACK=True BENTOML_HOME=/var/lib/bentoml \
    TUNELOOP_HOME=/var/lib/tuneloop TUNELOOP_POLICY_PATH=/app/registry/policy.yaml HOME=/tmp
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp tuneloop \
 && mkdir -p /var/lib/tuneloop /var/lib/bentoml && chown 10001:10001 /var/lib/tuneloop /var/lib/bentoml
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY registry ./registry
USER 10001:10001
EXPOSE 3000
# For `docker run`; on Kubernetes the Deployment's probes (/livez, /readyz) apply instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=4)"]
ENTRYPOINT ["tuneloop"]
# On 0.0.0.0 `tuneloop serve` starts only with TUNELOOP_API_TOKEN set (the k8s `service` Secret has
# it; with `docker run`, pass the token variable by -e), or with `--insecure` when auth is done in front.
CMD ["serve", "--host", "0.0.0.0", "--port", "3000"]
