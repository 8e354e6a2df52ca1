"""The pure trigger decision (steps/triggers.py), table-driven, and its policy section."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tuneloop.registry.policy import TriggerPolicy, load_policy
from tuneloop.steps.triggers import Signals, decide_round, label_mix_distance, read_prometheus

REGISTRY = Path(__file__).resolve().parents[1] / "registry"
NOW = 1_000_000.0
H = 3600.0
POLICY = TriggerPolicy(
    min_new_rows=200,
    min_mean_confidence=0.70,
    max_label_mix_distance=0.25,
    min_drift_requests=500,
    cooldown_seconds=6 * H,
    max_rounds_per_day=4,
)
QUIET = Signals(new_rows=0, served=1000, mean_confidence=0.9, label_mix_distance=0.05)


@pytest.mark.parametrize(
    ("name", "trigger", "signals", "rounds", "policy", "start", "says"),
    [
        ("manual always starts", "manual", QUIET, [NOW - 60] * 9, None, True, "operator"),
        ("no triggers section", "data", Signals(new_rows=10_000), [], None, False, "only by hand"),
        ("enough rows", "data", Signals(new_rows=200), [], POLICY, True, "200 new rows"),
        ("too few rows", "data", Signals(new_rows=199), [], POLICY, False, "199 new rows"),
        ("schedule with rows", "schedule", Signals(new_rows=500), [NOW - 7 * H], POLICY, True, "500 new"),
        ("low confidence", "drift", Signals(0, 600, 0.69, 0.05), [], POLICY, True, "confidence 0.690"),
        ("label mix moved", "drift", Signals(0, 600, 0.9, 0.26), [], POLICY, True, "distance 0.260"),
        ("too little traffic", "drift", Signals(0, 499, 0.1, 0.9), [], POLICY, False, "not judged"),
        ("healthy service", "drift", QUIET, [], POLICY, False, "mean confidence 0.900"),
        ("cooldown", "data", Signals(new_rows=5000), [NOW - 6 * H + 1], POLICY, False, "cooling down"),
        ("cooldown over", "data", Signals(new_rows=5000), [NOW - 6 * H], POLICY, True, "5000 new rows"),
        (
            "daily cap",
            "drift",
            Signals(0, 600, 0.1, 0.9),
            [NOW - 23 * H, NOW - 22 * H, NOW - 21 * H, NOW - 20 * H],
            POLICY.model_copy(update={"cooldown_seconds": 0}),
            False,
            "cap of 4",
        ),
        (
            "cap counts 24 h only",
            "data",
            Signals(new_rows=300),
            [NOW - 25 * H, NOW - 22 * H, NOW - 21 * H, NOW - 20 * H],
            POLICY.model_copy(update={"cooldown_seconds": 0}),
            True,
            "300 new rows",
        ),
    ],
)
def test_decide_round(name, trigger, signals, rounds, policy, start, says) -> None:
    decision = decide_round(trigger, signals, rounds, policy, NOW)
    assert decision.start is start, (name, decision.reasons)
    assert any(says in reason for reason in decision.reasons), (name, decision.reasons)


def test_cap_says_when_the_next_round_may_start() -> None:
    policy = POLICY.model_copy(update={"cooldown_seconds": 0})
    rounds = [NOW - 23 * H, NOW - 22 * H, NOW - 21 * H, NOW - 20 * H]
    decision = decide_round("data", Signals(new_rows=300), rounds, policy, NOW)
    assert "next may start in 3600 s" in decision.reasons[0]  # the oldest leaves the window in 1 h


def test_unknown_trigger_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown trigger"):
        decide_round("cron", QUIET, [], POLICY, NOW)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({"x": 5, "y": 5}, {"x": 1, "y": 1}, 0.0),
        ({"x": 1}, {"y": 1}, 1.0),
        ({"x": 3, "y": 1}, {"x": 1, "y": 1}, 0.25),
        ({}, {"x": 1}, None),
    ],
)
def test_label_mix_distance(a, b, expected) -> None:
    assert label_mix_distance(a, b) == expected


def test_read_prometheus_takes_the_named_version_only() -> None:
    text = "\n".join(
        [
            "# TYPE tuneloop_items counter",
            'tuneloop_items_total{model_version="3"} 10.0',
            'tuneloop_items_total{model_version="4"} 99.0',
            "# TYPE tuneloop_confidence histogram",
            'tuneloop_confidence_bucket{le="+Inf",model_version="3"} 10.0',
            'tuneloop_confidence_sum{model_version="3"} 6.5',
            'tuneloop_confidence_count{model_version="3"} 10.0',
            "# TYPE tuneloop_predicted counter",
            'tuneloop_predicted_total{label="a",model_version="3"} 7.0',
            'tuneloop_predicted_total{label="b",model_version="3"} 3.0',
            'tuneloop_predicted_total{label="a",model_version="4"} 99.0',
            "",
        ]
    )
    figures = read_prometheus(text, "3")
    assert figures == {
        "answered": 10.0,
        "confidence_sum": 6.5,
        "confidence_count": 10.0,
        "labels": {"a": 7.0, "b": 3.0},
    }


def test_checked_in_policies_have_triggers_and_the_demo_is_faster() -> None:
    prod = load_policy(REGISTRY / "policy.yaml").triggers
    demo = load_policy(REGISTRY / "policy.demo.yaml").triggers
    assert prod is not None and demo is not None
    assert demo.cooldown_seconds < prod.cooldown_seconds
    assert demo.min_new_rows < prod.min_new_rows


def replica_metrics(items: int, labels: dict[str, int], confidence_sum: float) -> str:
    """One replica's /metrics text for champion v3 (the series serve/metrics.py writes)."""
    lines = [
        "# TYPE tuneloop_items counter",
        f'tuneloop_items_total{{model_version="3"}} {items}.0',
        "# TYPE tuneloop_confidence histogram",
        f'tuneloop_confidence_bucket{{le="+Inf",model_version="3"}} {items}.0',
        f'tuneloop_confidence_sum{{model_version="3"}} {confidence_sum}',
        f'tuneloop_confidence_count{{model_version="3"}} {items}.0',
        "# TYPE tuneloop_predicted counter",
        *(f'tuneloop_predicted_total{{label="{k}",model_version="3"}} {n}.0' for k, n in labels.items()),
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def replicas() -> Iterator[tuple[list[str], list[str]]]:
    """Two replicas' /metrics, each asking for the bearer token, on one port of two loopback
    addresses (127.0.0.1 and 127.0.0.2, as two pods behind one headless Service name); yields
    (their URLs, the URLs hit)."""
    import http.server
    import threading

    hits: list[str] = []
    bodies = [replica_metrics(300, {"a": 200, "b": 100}, 240.0), replica_metrics(100, {"b": 100}, 50.0)]
    servers: list[http.server.ThreadingHTTPServer] = []
    for address, body in zip(("127.0.0.1", "127.0.0.2"), bodies, strict=True):

        class Handler(http.server.BaseHTTPRequestHandler):
            text = body

            def do_GET(self) -> None:
                host, port = self.server.server_address[:2]
                hits.append(f"http://{host}:{port}{self.path}")
                ok = self.headers.get("authorization") == "Bearer t0k" and self.path == "/metrics"
                payload = self.text.encode() if ok else b"no"
                self.send_response(200 if ok else 401)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        port = servers[0].server_address[1] if servers else 0
        server = http.server.ThreadingHTTPServer((address, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield [f"http://{s.server_address[0]}:{s.server_address[1]}" for s in servers], hits
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


class OneChampion:
    """The registry calls gather_signals makes: champion v3, trained on no snapshot here."""

    def alias(self, name: str) -> object:
        return SimpleNamespace(version="3", tags={})

    def versions(self) -> list[object]:
        return []


def test_drift_and_canary_figures_sum_every_replica_listed(replicas, tmp_path, monkeypatch) -> None:
    """TUNELOOP_SERVICE_URL lists replicas comma-separated: the rollout and the drift watch read all."""
    from tuneloop.config import load_settings
    from tuneloop.rollout.sources import EndpointSource
    from tuneloop.steps.metrics import metrics_source
    from tuneloop.steps.trigger_signals import gather_signals

    urls, hits = replicas
    listed = f"{urls[0]}/, {urls[1]}"
    monkeypatch.delenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", raising=False)
    monkeypatch.delenv("TUNELOOP_ROLLOUT_REPLICAS_URL", raising=False)
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "t0k")
    source = metrics_source(listed)
    assert isinstance(source, EndpointSource)
    canary_side = source.read()["3"]
    assert canary_side.items == 400 and canary_side.predicted == {"a": 200, "b": 200}
    settings = load_settings(home=tmp_path / "home")
    signals, _ = gather_signals(settings, listed, registry=OneChampion())  # type: ignore[arg-type]
    assert signals.notes == [] and signals.served == 400
    assert signals.mean_confidence == pytest.approx((240.0 + 50.0) / 400)
    assert sorted(hits) == sorted([f"{url}/metrics" for url in urls] * 2)  # both, twice each


def test_replicas_are_scraped_with_the_read_only_metrics_token_first(replicas, monkeypatch) -> None:
    """TUNELOOP_METRICS_TOKEN wins over TUNELOOP_API_TOKEN: the flows scrape with the read-only one."""
    from tuneloop.steps.metrics import metrics_source

    urls, hits = replicas
    monkeypatch.delenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", raising=False)
    monkeypatch.delenv("TUNELOOP_ROLLOUT_REPLICAS_URL", raising=False)
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "all-scopes")  # the replicas accept only "t0k"
    monkeypatch.setenv("TUNELOOP_METRICS_TOKEN", "t0k")
    assert metrics_source(",".join(urls)).read()["3"].items == 400
    assert sorted(hits) == sorted(f"{url}/metrics" for url in urls)


def test_drift_reads_every_address_of_the_replicas_url_the_rollout_reads(
    replicas, tmp_path, monkeypatch
) -> None:
    """On a cluster TUNELOOP_SERVICE_URL is the load-balanced Service (one pod per scrape); the
    rollout reads every pod through TUNELOOP_ROLLOUT_REPLICAS_URL (a headless Service), and so must
    the drift watch."""
    from tuneloop.config import load_settings
    from tuneloop.steps.metrics import metrics_source
    from tuneloop.steps.trigger_signals import gather_signals

    urls, hits = replicas
    port = int(urls[0].rsplit(":", 1)[1])
    resolve = socket.getaddrinfo

    def pods(host, *args, **kwargs):  # type: ignore[no-untyped-def]  # the headless Service's DNS answer
        if host != "tuneloop-service-pods.test":
            return resolve(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("127.0.0.1", "127.0.0.2")]

    monkeypatch.setattr(socket, "getaddrinfo", pods)
    monkeypatch.delenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", raising=False)
    monkeypatch.setenv("TUNELOOP_ROLLOUT_REPLICAS_URL", f"http://tuneloop-service-pods.test:{port}")
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "t0k")
    one_pod = urls[0]  # what the load-balanced Service URL would reach on one scrape
    assert metrics_source(one_pod).read()["3"].items == 400
    settings = load_settings(home=tmp_path / "home")
    signals, _ = gather_signals(settings, one_pod, registry=OneChampion())  # type: ignore[arg-type]
    assert signals.notes == [] and signals.served == 400
    assert sorted(hits) == sorted([f"{url}/metrics" for url in urls] * 2)


def test_drift_is_not_judged_on_a_share_when_a_listed_replica_is_down(
    replicas, tmp_path, monkeypatch
) -> None:
    from tuneloop.config import load_settings
    from tuneloop.steps.trigger_signals import gather_signals

    urls, _ = replicas
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "t0k")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        settings = load_settings(home=tmp_path / "home")
        signals, _ = gather_signals(settings, f"{urls[0]},{down}", registry=OneChampion())  # type: ignore[arg-type]
    assert signals.served == 0 and signals.mean_confidence is None
    assert len(signals.notes) == 1 and f"drift not judged: {down}/metrics unreachable" in signals.notes[0]

    # A replicas name that does not resolve is said too, never judged on what else answers.
    def nxdomain(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)
    monkeypatch.setenv("TUNELOOP_ROLLOUT_REPLICAS_URL", "http://no-such-replicas.invalid:3000")
    signals, _ = gather_signals(settings, urls[0], registry=OneChampion())  # type: ignore[arg-type]
    assert (
        signals.served == 0 and "drift not judged: resolving 'no-such-replicas.invalid'" in signals.notes[0]
    )


def test_canary_figures_come_from_prometheus_when_one_is_named(monkeypatch) -> None:
    from tuneloop.rollout.sources import PrometheusSource
    from tuneloop.steps.metrics import metrics_source

    monkeypatch.setenv("TUNELOOP_ROLLOUT_PROMETHEUS_URL", "http://prometheus:9090")
    monkeypatch.setenv("TUNELOOP_ROLLOUT_PROMETHEUS_SELECTOR", '{job="tuneloop"}')
    fleet = metrics_source("http://pod-a:3000")
    assert isinstance(fleet, PrometheusSource) and fleet.base_url == "http://prometheus:9090"
    assert fleet.selector == '{job="tuneloop"}'
