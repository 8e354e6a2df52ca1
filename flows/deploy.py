"""Register tuneloop's deployments with a Prefect server: schedules, triggers and work pools.

    tuneloop worker                               # serve every deployment from this process
    python flows/deploy.py serve                  # the same
    python flows/deploy.py deploy --pool NAME     # register deployments on a work pool's workers
    prefect deployment run continual/loop -p trigger=manual -p dry_run=true   # a manual round

Occasions, all on one deployment `continual/loop` with a concurrency limit of 1 (so a schedule, a
trigger and an operator never run two rounds at once); whether a round really starts is decided in
our code (steps/triggers.py: rows, drift, cooldown, daily cap), not by Prefect:
- nightly at 02:00 UTC (`trigger=schedule`), the backstop should an event be lost;
- the event `tuneloop.data.landed` (emitted by the `ingest` flow when it cuts a snapshot, with the
  row count) runs it with `trigger=data`; `decide_round` then adds up the rows since the champion's
  snapshot, so several small drops count together;
- the event `tuneloop.drift.detected` (emitted by the `watch` flow) runs it with `trigger=drift`.
The landing folder is polled every 15 minutes (ingest is idempotent, so an empty poll costs one
directory listing); `watch` reads the service's /metrics every 10 minutes: at ~10 requests a second
that is ~6,000 answers, well past the 500 the drift check needs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flows.events import DATA_LANDED, DRIFT_DETECTED

REPO = Path(__file__).resolve().parents[1]
# (flow entrypoint, deployment name, schedule and other deployment options)
DEPLOYMENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("flows/ingest.py:ingest_flow", "landing-poll", {"interval": 15 * 60}),
    ("flows/continual.py:continual_flow", "loop", {"cron": "0 2 * * *"}),
    ("flows/watch.py:watch_flow", "service", {"interval": 10 * 60}),
    # The single-stage flows stay for operators; the nightly round is continual's now.
    ("flows/train.py:train_flow", "manual", {}),
    ("flows/train.py:approve_flow", "manual", {}),
    ("flows/ingest.py:exclude_flow", "manual", {}),
    # Weekly: what was stored before redaction existed, or landed by hand, is found and reported.
    ("flows/ingest.py:redact_check_flow", "weekly-scan", {"cron": "0 3 * * 0"}),
]


def continual_options() -> dict[str, Any]:
    """Parameters, triggers and concurrency of the `continual` deployment (also used by tests)."""
    from prefect.events import DeploymentEventTrigger

    def on(event: str, trigger: str) -> DeploymentEventTrigger:
        return DeploymentEventTrigger(
            name=f"{event} -> continual",
            expect={event},
            match={"prefect.resource.id": "tuneloop.*"},
            parameters={"trigger": trigger},
        )

    return {
        "parameters": {"trigger": "schedule"},
        "triggers": [on(DATA_LANDED, "data"), on(DRIFT_DETECTED, "drift")],
        "concurrency_limit": 1,
    }


def options(entrypoint: str, schedule: dict[str, Any]) -> dict[str, Any]:
    extra = continual_options() if entrypoint.endswith(":continual_flow") else {}
    return {**schedule, **extra}


def runner_deployments() -> list[Any]:
    """Every deployment as a RunnerDeployment of the flows imported here (for `serve`)."""
    from flows.continual import continual_flow
    from flows.ingest import exclude_flow, ingest_flow, redact_check_flow
    from flows.train import approve_flow, train_flow
    from flows.watch import watch_flow

    flows = {
        "ingest_flow": ingest_flow,
        "continual_flow": continual_flow,
        "watch_flow": watch_flow,
        "train_flow": train_flow,
        "approve_flow": approve_flow,
        "exclude_flow": exclude_flow,
        "redact_check_flow": redact_check_flow,
    }
    return [
        flows[ep.split(":")[1]].to_deployment(name=name, **options(ep, sched))
        for ep, name, sched in DEPLOYMENTS
    ]


def serve_all() -> None:
    """Serve every deployment in the foreground until interrupted (`tuneloop worker`)."""
    from prefect import serve

    serve(*runner_deployments())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["serve", "deploy"])
    parser.add_argument("--pool", default="tuneloop-local", help="work pool for `deploy`")
    parser.add_argument("--image", default=None, help="container image for Kubernetes pools")
    args = parser.parse_args()

    if args.mode == "serve":
        serve_all()
        return
    from prefect import flow

    for entrypoint, name, schedule in DEPLOYMENTS:
        remote = flow.from_source(source=str(REPO), entrypoint=entrypoint)
        remote.deploy(
            name=name,
            work_pool_name=args.pool,
            image=args.image,
            build=False,
            push=False,
            **options(entrypoint, schedule),
        )


if __name__ == "__main__":
    main()
