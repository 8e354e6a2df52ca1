"""Register tuneloop's deployments with a Prefect server: schedules and work pools, nothing else.

    python flows/deploy.py serve                  # one long-running process serves every schedule
    python flows/deploy.py deploy --pool NAME     # register deployments on a work pool's workers

Schedules: the landing folder is polled every 15 minutes (ingest is idempotent, so an empty poll
costs one directory listing); a retraining round runs nightly at 02:00 UTC on the newest snapshot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# (flow entrypoint, deployment name, schedule)
DEPLOYMENTS = [
    ("flows/ingest.py:ingest_flow", "landing-poll", {"interval": 15 * 60}),
    ("flows/train.py:train_flow", "nightly", {"cron": "0 2 * * *"}),
    ("flows/train.py:approve_flow", "manual", {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["serve", "deploy"])
    parser.add_argument("--pool", default="tuneloop-local", help="work pool for `deploy`")
    parser.add_argument("--image", default=None, help="container image for Kubernetes pools")
    args = parser.parse_args()

    from prefect import flow, serve

    if args.mode == "serve":
        from flows.ingest import ingest_flow
        from flows.train import approve_flow, train_flow

        flows = {"ingest_flow": ingest_flow, "train_flow": train_flow, "approve_flow": approve_flow}
        serve(*(flows[ep.split(":")[1]].to_deployment(name=name, **sched) for ep, name, sched in DEPLOYMENTS))
        return
    for entrypoint, name, schedule in DEPLOYMENTS:
        remote = flow.from_source(source=str(REPO), entrypoint=entrypoint)
        remote.deploy(
            name=name, work_pool_name=args.pool, image=args.image, build=False, push=False, **schedule
        )


if __name__ == "__main__":
    main()
