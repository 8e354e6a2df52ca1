"""`tuneloop demo --projects 2`: two classifiers in one loop and one service, each with its tenant.

1. Two projects on the bundled support data: the default one (the ten support intents, as
   `make demo`) and `routing`, a second classifier built from the same rows that sends a message to
   the team that handles it (ROUTES: payments, orders, account). `routing` is declared with
   `tuneloop project add`, so its data, registered model, canary and metrics are its own.
2. The base drop lands in both; the two first rounds train at the same time (each project's
   registry locks are its own), are converted, and promoted.
3. One `tuneloop serve` hosts both. Two tenants (`tuneloop tenant add`): `support-app` may call
   the default project, `routing-app` the routing one with a small quota. The demo shows a token
   refused on the other project (403) and a tenant over its quota answered 429 with Retry-After.
4. Both canaries at once: drift-1 trains a new default-project version, and routing's candidate is
   a copy of its champion served with the fault switch (TUNELOOP_SERVE_FAULT_PROJECT=routing). One
   service, two controllers, each reading only its project's metrics: the first is promoted,
   the second rolled back, and neither project's callers see an error.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

from tuneloop.config import Settings, load_settings
from tuneloop.demo.service import DemoService, Traffic
from tuneloop.demo.story import Echo, _round, _say, demo_settings

SECOND = "routing"
# The second classifier's label for each support intent: the team that handles it.
ROUTES = {
    "payment_failed": "payments",
    "update_payment_method": "payments",
    "refund_status": "payments",
    "track_order": "orders",
    "delivery_delay": "orders",
    "cancel_order": "orders",
    "return_item": "orders",
    "cancel_subscription": "account",
}
DEFAULT_ROUTE = "account"  # reset_password, change_address, and any intent not listed
METRICS_TOKEN_BYTES = 24


def routed(samples: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(text, ROUTES.get(label, DEFAULT_ROUTE)) for text, label in samples]


def run_projects_demo(settings: Settings, echo: Echo | None = None, **train_overrides: Any) -> dict[str, Any]:
    """Run the two-project story; return {projects: {name: {...}}, tenants: {...}, seconds}."""
    import secrets

    import pandas as pd

    from tuneloop.projects import add_project, project_names
    from tuneloop.steps.bundled import bundled_drops
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.tenants import add_tenant

    start = time.monotonic()
    say = echo or (lambda _msg: None)
    default = demo_settings(settings)
    if SECOND not in project_names(default):
        add_project(default, SECOND, policy=default.policy_path)
    second = load_settings(**_same_world(default), project=SECOND)
    _say(say, f"projects: default ({default.model_name}) and {SECOND} ({second.model_name}), one home")
    drops = {d.name: d for d in bundled_drops(default.work_dir / "bundled")}
    samples = {"default": list(drops["base"].samples), SECOND: routed(drops["base"].samples)}
    for project, mine in (("default", default), (SECOND, second)):
        mine.landing_dir.mkdir(parents=True, exist_ok=True)
        target = mine.landing_dir / "base.csv"
        frame = pd.DataFrame(samples[project], columns=["text", "label"])
        frame.to_csv(target, index=False)
        ingested = ingest_step(mine, [target])
        _say(say, f"{project}: ingest: {ingested['message']}")

    tokens = {
        tenant: add_tenant(default, tenant, [project], rps=rps, burst=burst)["token"]
        for tenant, project, rps, burst in (
            ("support-app", "default", 1000.0, 2000),
            ("routing-app", SECOND, 1000.0, 2000),
            ("nightly-batch", SECOND, 1.0, 3),  # a small quota: the one that goes over it
        )
    }
    _say(say, "tenants: support-app (default), routing-app (routing), nightly-batch (routing, 1 request/s)")

    service = DemoService(
        default,
        fault={
            "TUNELOOP_SERVE_FAULT_PROJECT": SECOND,
            "TUNELOOP_SERVE_FAULT_VERSION": "2",  # routing's second version: the bad candidate below
            "TUNELOOP_SERVE_FAULT_ERROR_RATE": "0.5",
        },
        metrics_token=secrets.token_urlsafe(METRICS_TOKEN_BYTES),
    )
    result: dict[str, Any] = {"projects": {}}
    try:
        service.start()
        first = _at_once(
            {
                "default": lambda: _round(
                    default, "base", "snap-0001", service, samples["default"], say, train_overrides
                ),
                SECOND: lambda: _round(
                    second, "base", "snap-0001", service, samples[SECOND], say, train_overrides
                ),
            }
        )
        for project, row in first.items():
            _say(say, f"{project}: v{row['version']} {row['outcome']} ({row['decision']})")
        service.wait_ready()
        result["tenants"] = _tenant_checks(service, tokens, say)
        result["projects"] = _both_canaries(default, second, service, drops, tokens, train_overrides, say)
    finally:
        service.stop()
    shutil.rmtree(default.work_dir / "bundled", ignore_errors=True)
    result["seconds"] = round(time.monotonic() - start, 1)
    _say(say, f"two projects, one service: {result['seconds']:.0f} s")
    return result


def _same_world(settings: Settings) -> dict[str, Any]:
    """The settings another project needs to share this one's home, registry and training knobs."""
    keep = settings.model_dump(exclude={"project", "model_name", "experiment", "data_experiment"})
    return {k: v for k, v in keep.items() if v is not None}


def _at_once(jobs: dict[str, Any]) -> dict[str, Any]:
    """Run each job in its own thread; their results by name (the first error raised again)."""
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            results[name] = jobs[name]()
        except BaseException as exc:  # raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,), name=f"demo-{name}") for name in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _tenant_checks(service: DemoService, tokens: dict[str, str], say: Echo) -> dict[str, Any]:
    """A token on the other project (403) and a tenant over its quota (429 with Retry-After)."""
    import httpx

    body = {"texts": ["where is my order"]}
    support, batch = ({"authorization": f"Bearer {tokens[t]}"} for t in ("support-app", "nightly-batch"))
    cross = httpx.post(f"{service.url}/v1/{SECOND}/classify", json=body, headers=support, timeout=30)
    _say(
        say, f"tenants: support-app on /v1/{SECOND}/classify -> {cross.status_code} ({cross.json()['error']})"
    )
    codes: list[int] = []
    retry_after = None
    with httpx.Client(base_url=service.url, headers=batch, timeout=30) as client:
        for _ in range(10):  # as fast as it answers: past the burst of 3 at 1 a second
            answer = client.post(f"/v1/{SECOND}/classify", json=body)
            codes.append(answer.status_code)
            retry_after = answer.headers.get("retry-after", retry_after)
    throttled = codes.count(429)
    _say(
        say,
        f"tenants: nightly-batch sent 10 requests back to back: {codes.count(200)} answered, "
        f"{throttled} x 429 (Retry-After {retry_after} s)",
    )
    return {"cross_project": cross.status_code, "answered": codes.count(200), "throttled": throttled}


def _both_canaries(
    default: Settings,
    second: Settings,
    service: DemoService,
    drops: dict[str, Any],
    tokens: dict[str, str],
    train_overrides: dict[str, Any],
    say: Echo,
) -> dict[str, Any]:
    """drift-1 for the default project, a faulty copy for routing; both canaries at once."""
    from tuneloop.steps.convert import convert_step
    from tuneloop.steps.ingest import ingest_step
    from tuneloop.steps.metrics import build_source
    from tuneloop.steps.rehearsal import register_champion_copy
    from tuneloop.steps.rollout import rollout_step
    from tuneloop.steps.round import train_step

    drift = drops["drift-1"]
    target = default.landing_dir / drift.path.name
    shutil.copy2(drift.path, target)
    snapshot = ingest_step(default, [target])["snapshot"]
    trained = train_step(default, snapshot_id=snapshot, progress=False, **train_overrides)
    candidate = str(trained["version"])
    convert_step(default, candidate)
    copy = register_champion_copy(second, f"demo: a copy of {SECOND}'s champion served with injected errors")
    assert copy is not None
    bad = str(copy["version"])
    _say(say, f"canaries: default v{candidate} (drift-1) and {SECOND} v{bad} (faulty copy) at once")
    pool = list(drift.samples) + list(drops["base"].samples)
    plans = {
        "default": (
            default,
            candidate,
            Traffic(service.url, pool, candidate, token=tokens["support-app"], land=True),
        ),
        SECOND: (
            second,
            bad,
            Traffic(
                service.url, routed(pool), bad, prefix=f"/v1/{SECOND}", token=tokens["routing-app"], land=True
            ),
        ),
    }

    def roll(project: str) -> dict[str, Any]:
        settings, version, traffic = plans[project]
        source = build_source([f"{service.url}/metrics"], project=project, token=service.metrics_token)
        with traffic:
            outcome = rollout_step(
                settings,
                version,
                source,
                by="demo",
                tick_s=0.5,
                echo=lambda m: _say(say, f"{project}: {m.strip()}", "  "),
            )
        return outcome

    outcomes = _at_once({name: (lambda name=name: roll(name)) for name in plans})
    summary: dict[str, Any] = {}
    for project, (_, version, traffic) in plans.items():
        outcome = outcomes[project]
        summary[project] = {
            "version": version,
            "outcome": outcome["outcome"],
            "reason": outcome.get("reason"),
            "requests": traffic.requests,
            "failed_requests": len(traffic.failures),
            "failures": traffic.failures[:3],
            "items": dict(traffic.answered),
        }
        _say(
            say,
            f"{project}: v{version} {outcome['outcome']}; {traffic.requests} requests, failed "
            f"{len(traffic.failures)}; items "
            + ", ".join(f"v{v} {n}" for v, n in sorted(traffic.answered.items())),
        )
    summary["default"]["gate"] = "passed" if trained["gate"]["passed"] else "refused"
    return summary
