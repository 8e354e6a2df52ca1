"""A round's artifacts through an S3 API: `mlflow server --artifacts-destination s3://...` proxying.

The S3 service is moto's server mode (`ThreadedMotoServer` on 127.0.0.1), a stand-in for MinIO or
S3 itself: MinIO's server is not packaged for Debian or PyPI. The MLflow server (store on
PostgreSQL) holds the S3 endpoint and keys (MLFLOW_S3_ENDPOINT_URL, AWS_*); the client has
neither and only talks to the server. A tuneloop round's merged model and checksums go through the
proxy into the bucket, `Registry.download(verify=True)` gets them back intact, and an object
altered in the bucket is refused.
"""

from __future__ import annotations

import json

import pytest
from tests.mlflow_servers import free_port, mlflow_server, pg_database

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences

pytestmark = pytest.mark.postgres

BUCKET = "tuneloop-artifacts"
# moto accepts any keys; these are test values, not credentials.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "tuneloop-test",
    "AWS_SECRET_ACCESS_KEY": "tuneloop-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3():
    """An S3 API on a free port of 127.0.0.1 with an empty bucket; (endpoint URL, boto3 client)."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        keys = {"aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"]}
        keys["aws_secret_access_key"] = S3_ENV["AWS_SECRET_ACCESS_KEY"]
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
        # moto keeps its buckets in the process, across servers: leave none for the next test.
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=BUCKET, Key=item["Key"])
        client.delete_bucket(Bucket=BUCKET)
    finally:
        server.stop()


def test_round_artifacts_go_through_the_proxy_to_s3_and_back_verified(s3, tmp_path, monkeypatch):
    from tuneloop.registry.store import Registry, RegistryError
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.round import train_step
    from tuneloop.testing import make_tiny_bert

    endpoint, bucket = s3
    # The client knows no S3: whatever reaches the bucket went through the MLflow server.
    for key in (*S3_ENV, "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    server_env = {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": endpoint}
    proxy = ("--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}/")
    with pg_database("tuneloop_s3") as store, mlflow_server(store, *proxy, env=server_env) as url:
        settings = load_settings(
            home=tmp_path / "home",
            tracking_uri=url,
            base_model=str(make_tiny_bert(tmp_path / "tiny")),
            epochs=1,
            **TINY_TRAIN_SETTINGS,
            policy_path=PROJECT_ROOT / "registry" / "policy.yaml",
        )
        drop = tmp_path / "drop.csv"
        keyword_sentences(["alpha", "beta"], 20, seed=0).to_csv(drop, index=False)
        ingest_step(settings, [drop])
        version = train_step(settings, progress=False)["version"]

        keys = [
            o["Key"]
            for page in bucket.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])
        ]
        weights = [k for k in keys if k.endswith("merged/model.safetensors")]
        assert len(weights) == 1, keys
        assert any(k.endswith("/checksums.json") for k in keys), keys

        registry = Registry(settings)
        folder = registry.download(version, verify=True)
        sums = json.loads((folder / "checksums.json").read_text())
        assert "merged/model.safetensors" in sums and (folder / "merged" / "model.safetensors").is_file()

        # Someone alters the weights in the bucket: the verified download refuses them.
        body = bucket.get_object(Bucket=BUCKET, Key=weights[0])["Body"].read()
        bucket.put_object(Bucket=BUCKET, Key=weights[0], Body=body[:-1] + bytes([body[-1] ^ 1]))
        with pytest.raises(RegistryError, match="does not match its recorded checksums"):
            registry.download(version, "merged", verify=True)
