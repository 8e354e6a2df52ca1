"""Metric sources: the service's text format, every replica read with increase() semantics, the
headless Service resolved to its pods, and where the controller is told to read (env, CLI)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from test_rollout_analysis import exposition
from tuneloop.rollout.counters import counters_from_samples, quantile_ms
from tuneloop.rollout.sources import EndpointSource, parse_prometheus_text, resolve_replicas

EXPOSITION = """\
# HELP tuneloop_items_total Items answered
# TYPE tuneloop_items_total counter
tuneloop_items_total{model_version="1"} 30.0
tuneloop_items_total{model_version="2"} 10.0
# TYPE tuneloop_model_errors_total counter
tuneloop_model_errors_total{model_version="2"} 1.0
# TYPE tuneloop_model_seconds histogram
tuneloop_model_seconds_bucket{le="0.001",model_version="2"} 2.0
tuneloop_model_seconds_bucket{le="+Inf",model_version="2"} 4.0
tuneloop_model_seconds_count{model_version="2"} 4.0
tuneloop_model_seconds_sum{model_version="2"} 0.005
# TYPE tuneloop_item_seconds histogram
tuneloop_item_seconds_bucket{le="0.001",model_version="2"} 6.0
tuneloop_item_seconds_bucket{le="0.002",model_version="2"} 10.0
tuneloop_item_seconds_bucket{le="+Inf",model_version="2"} 10.0
tuneloop_item_seconds_count{model_version="2"} 10.0
tuneloop_item_seconds_sum{model_version="2"} 0.01
# TYPE tuneloop_predicted_total counter
tuneloop_predicted_total{label="a",model_version="2"} 6.0
tuneloop_predicted_total{label="b",model_version="2"} 4.0
# TYPE tuneloop_shadow_total counter
tuneloop_shadow_total{agreed="true",model_version="2"} 3.0
tuneloop_shadow_total{agreed="false",model_version="2"} 1.0
# TYPE tuneloop_feedback_total counter
tuneloop_feedback_total{correct="true",model_version="2"} 2.0
tuneloop_feedback_total{correct="false",model_version="1"} 5.0
"""


def test_counters_from_the_service_text_format() -> None:
    counters = counters_from_samples(parse_prometheus_text(EXPOSITION))
    two = counters["2"]
    assert (two.items, two.errors, two.calls) == (10, 1, 4)
    assert two.error_rate == pytest.approx(0.2)
    assert two.predicted == {"a": 6, "b": 4}
    assert (two.shadow_agreed, two.shadow_disagreed, two.feedback_correct) == (3, 1, 2)
    assert counters["1"].feedback_wrong == 5
    assert two.item_latency_buckets == {"0.001": 6, "0.002": 10, "inf": 10}
    assert two.latency_items == 10 and two.p95_ms() == pytest.approx(1.875)


class _Replica:
    """A tiny /metrics server whose exposition the test sets."""

    def __init__(self) -> None:
        self.text = ""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = owner.text.encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def replicas() -> Iterator[tuple[_Replica, _Replica]]:
    pair = (_Replica(), _Replica())
    yield pair
    for r in pair:
        r.server.shutdown()
        r.server.server_close()


def test_endpoint_window_reads_every_replica_with_increase_semantics(replicas) -> None:
    a, b = replicas
    a.text, b.text = exposition("2", 1000, 0, 250), exposition("2", 50, 0, 12)
    source = EndpointSource([a.url, b.url])
    window = source.window()  # the baseline reading
    a.text, b.text = exposition("2", 100, 0, 25), exposition("2", 450, 3, 112)  # a restarted
    canary = window.read()["2"]
    assert (canary.items, canary.errors, canary.calls) == (100 + 400, 3, 25 + 100)
    assert source.read()["2"].items == 550  # a glance: cumulative, summed


def test_resolve_reads_every_address_of_one_family(monkeypatch) -> None:
    import socket

    answers = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 3000)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::7", 3000, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 3000)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::5", 3000, 0, 0)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)  # a dual-stack headless Service
    urls = resolve_replicas("http://tuneloop-service-pods.tuneloop.svc.cluster.local:3000/metrics")
    assert urls == ["http://10.0.0.5:3000/metrics", "http://10.0.0.7:3000/metrics"]  # each pod once
    source = EndpointSource(["http://tuneloop-service-pods:3000/metrics"], resolve=True)
    assert source.replicas() == urls


def test_the_continual_controller_reads_every_address_of_the_replicas_url(monkeypatch) -> None:
    from tuneloop.steps.metrics import metrics_source

    monkeypatch.delenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", raising=False)
    monkeypatch.setenv("TUNELOOP_ROLLOUT_REPLICAS_URL", "http://tuneloop-service-pods.tuneloop.svc:3000")
    source = metrics_source("http://tuneloop-service.tuneloop.svc:3000")  # the load-balanced one
    assert isinstance(source, EndpointSource) and source.resolve
    assert source.urls == ["http://tuneloop-service-pods.tuneloop.svc:3000/metrics"]


def test_rollout_cli_passes_the_prometheus_selector(monkeypatch, tmp_path) -> None:
    """`tuneloop rollout --prometheus` used to drop the selector the continual flow applies."""
    from typer.testing import CliRunner

    import tuneloop.steps.rollout as controller
    from tuneloop.cli import app
    from tuneloop.rollout.sources import PrometheusSource

    seen: dict[str, object] = {}

    def fake_rollout_step(settings, version, source, **kwargs):  # the source is the point here
        seen["source"] = source
        return {"version": version, "outcome": "promoted", "champion": version}

    monkeypatch.setattr(controller, "rollout_step", fake_rollout_step)
    monkeypatch.setenv("TUNELOOP_HOME", str(tmp_path))
    args = ["rollout", "3", "--prometheus", "http://prometheus:9090", "--selector", '{job="tuneloop"}']
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    source = seen["source"]
    assert isinstance(source, PrometheusSource) and source.selector == '{job="tuneloop"}'
    monkeypatch.setenv("TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR", '{namespace="tuneloop"}')
    assert CliRunner().invoke(app, args[:4]).exit_code == 0
    assert seen["source"].selector == '{namespace="tuneloop"}'  # the flow's variable is the default


def test_quantile_is_monotone_over_extrapolated_buckets() -> None:
    # increase() extrapolates each bucket on its own: a higher bucket can dip below a lower one.
    assert quantile_ms({"0.001": 50.2, "0.002": 50.0, "inf": 100.0}, 0.5) == pytest.approx(1.0, abs=0.01)


# --- projects: one service, several projects, the same version numbers ------------------------------

SERVICE_TEXT = """\
import os, sys
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from tuneloop.serve.metrics import PrometheusObserver

default, a = PrometheusObserver(), PrometheusObserver("a")  # what the service builds, one a project
for observer, items, errors in ((default, 30, 1), (a, 7, 0)):
    for _ in range(items):
        observer.batch("2", 1, 0.0015)
        observer.predicted("2", "x", 0.9)
    for _ in range(errors):
        observer.error("2")
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
sys.stdout.write(generate_latest(registry).decode())
"""


@pytest.fixture(scope="module")
def two_projects_text(tmp_path_factory) -> str:
    """/metrics of a service hosting the default project and project `a`, both serving a v2, as
    serve/metrics.py writes it (multiprocess mode, as under BentoML)."""
    import os
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("multiproc")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    done = subprocess.run(
        [sys.executable, "-c", SERVICE_TEXT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert 'project="a"' in done.stdout and 'project="default"' in done.stdout
    return done.stdout


def test_endpoint_source_reads_only_its_projects_series(replicas, two_projects_text) -> None:
    a, b = replicas
    a.text = two_projects_text
    b.text = exposition("2", 5, 0, 2)  # a service from before projects: no project label
    default = EndpointSource([a.url, b.url]).read()["2"]
    assert (default.items, default.errors, default.calls) == (30 + 5, 1, 30 + 2)
    assert default.predicted == {"x": 30}
    mine = EndpointSource([a.url, b.url], project="a")
    theirs = mine.read()["2"]
    assert (theirs.items, theirs.errors, theirs.calls, theirs.predicted) == (7, 0, 7, {"x": 7})
    window, whole = mine.window(), EndpointSource([a.url, b.url]).window()
    b.text = exposition("2", 500, 50, 200)  # the default project's traffic moves; a's does not
    assert window.read()["2"].items == 0 and window.read()["2"].errors == 0
    assert whole.read()["2"].errors == 50
    assert EndpointSource([b.url], project="b").read() == {}  # b serves nothing here


def test_drift_reads_only_its_projects_champion(two_projects_text) -> None:
    from tuneloop.steps.triggers import read_prometheus

    assert read_prometheus(two_projects_text, "2")["answered"] == 30
    figures = read_prometheus(two_projects_text, "2", "a")
    assert figures["answered"] == 7 and figures["labels"] == {"x": 7}
    assert figures["confidence_count"] == 7


@pytest.mark.parametrize(
    ("selector", "project", "expected"),
    [
        ("", "a", '{project="a"}'),
        ("", "default", '{project=~"default|"}'),
        ('{job="tuneloop"}', "a", '{job="tuneloop",project="a"}'),
        ('{job="tuneloop-service-pods",namespace="tuneloop",}', "cards", None),
        ("{}", "default", '{project=~"default|"}'),
    ],
)
def test_prometheus_selector_gains_the_projects_matcher(selector, project, expected) -> None:
    from tuneloop.rollout.sources import PrometheusSource, project_selector

    if expected is None:
        expected = '{job="tuneloop-service-pods",namespace="tuneloop",project="cards"}'
    assert project_selector(selector, project) == expected
    assert PrometheusSource("http://p:9090", selector=selector, project=project).query_selector == expected


@pytest.mark.parametrize("selector", ['{project="b"}', '{job="x", project=~"a|b"}', 'job="x"'])
def test_a_selector_naming_the_project_or_not_a_selector_is_refused(selector) -> None:
    from tuneloop.rollout.sources import project_selector

    with pytest.raises(ValueError, match="project|label selector"):
        project_selector(selector, "a")


def test_the_controllers_sources_are_their_projects(monkeypatch) -> None:
    from tuneloop.rollout.sources import PrometheusSource
    from tuneloop.steps.metrics import metrics_source, replica_source

    monkeypatch.delenv("TUNELOOP_ROLLOUT_REPLICAS_URL", raising=False)
    monkeypatch.delenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", raising=False)
    assert metrics_source("http://svc:3000", "a").project == "a"
    assert replica_source("http://svc:3000", "a").project == "a"
    assert metrics_source("http://svc:3000").project == "default"
    monkeypatch.setenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", "http://prometheus:9090")
    monkeypatch.setenv("TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR", '{job="tuneloop"}')
    fleet = metrics_source("http://svc:3000", "a")
    assert isinstance(fleet, PrometheusSource)
    assert fleet.query_selector == '{job="tuneloop",project="a"}'


@pytest.mark.e2e  # a real Prometheus: ~10 s
def test_a_real_prometheus_reads_only_the_projects_series(replicas, two_projects_text, tmp_path) -> None:
    """PromQL through a real Prometheus scraping a two-project service and an unlabelled old one."""
    import shutil
    import subprocess
    import time

    import yaml

    from test_serve_hardening import free_port
    from tuneloop.rollout.sources import PrometheusSource

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the `prometheus` binary is not installed (Debian: apt-get install prometheus)")
    a, b = replicas
    a.text, b.text = two_projects_text, exposition("2", 5, 0, 2)
    targets = [r.url.removeprefix("http://").removesuffix("/metrics") for r in (a, b)]
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{"job_name": "tuneloop", "static_configs": [{"targets": targets}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=log,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            default = PrometheusSource(url, selector='{job="tuneloop"}')
            mine = PrometheusSource(url, selector='{job="tuneloop"}', project="a")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if default.read().get("2", None) is not None and default.read()["2"].items == 35:
                        break
                except Exception:  # not up yet
                    pass
                time.sleep(0.5)
            else:
                pytest.fail("Prometheus never scraped both replicas: see prometheus.log")
            two = default.read()["2"]
            assert (two.items, two.errors, two.calls, two.predicted) == (35, 1, 32, {"x": 30})
            theirs = mine.read()["2"]
            assert (theirs.items, theirs.errors, theirs.calls, theirs.predicted) == (7, 0, 7, {"x": 7})
            assert PrometheusSource(url, project="b").read() == {}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
