"""Register tuneloop's deployments with a Prefect server: schedules, triggers and work pools.

    tuneloop worker [--replace]                   # serve every deployment from this process
    python flows/deploy.py serve [--replace]      # the same
    python flows/deploy.py pool --name tuneloop-k8s --template infra/prefect/base-job-template.json \
        [--image IMAGE]                           # create the pool, or set its template (idempotent)
    python flows/deploy.py deploy --pool tuneloop-k8s [--resources standard|small] [--image IMAGE]
    prefect deployment run continual/loop -p trigger=manual -p dry_run=true   # a manual round

`pool` runs before the first worker (the prefect-worker Deployment's initContainer): a worker that
finds no pool creates one with Prefect's default Kubernetes template (namespace `default`), and
`pool` repairs such a pool. The template must pin image, namespace, service account and state claim
as literals (flows/pool.py says why; a template declaring them as variables is refused); `--image`
writes the image into the job's container. So on the Kubernetes pool the image comes from the pool:
`deploy --image` is for a pool whose template has an `image` variable (docker), and is refused on
one that has none.

`deploy` gives each deployment the CPU and memory of its flow-run Job as job variables
(flows/resources.py): `--resources standard` for a cluster, `small` for kind on a 4-core 8 GiB laptop.

`serve` refuses when the Prefect server already has deployments of the same names on a work pool (a
cluster's): serving would take them over, schedules and triggers included, from a laptop. Point
PREFECT_API_URL at another server, or pass `--replace` to take them over (they are deleted first, so
no run of theirs goes to the pool's workers).

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
that is ~6,000 answers, well past the 500 the drift check needs. `gc` runs daily at 04:00 UTC, after
the round and the Sunday scan (retention in the policy, flows/gc.py).

Projects (tuneloop.projects): every deployment above exists once per project, from one table
(`planned_deployments`), with `parameters={"project": NAME}` and the tag `project:NAME`. The
default project keeps the names above (`continual/loop`); another project's are suffixed with its
name (`continual/loop-cards`). Each project's `continual` deployment has its own concurrency limit
of 1, so one project's long rollout queues only that project's next round, never another's; its
triggers match only events labelled with its project (`tuneloop.project`, set by the `ingest` and
`watch` flows), and cooldown and daily cap count that project's rounds (its registered model's
versions). Declaring a project (`tuneloop project add`) and running `deploy` (or `serve`) again
registers its deployments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.config import DEFAULT_PROJECT

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
    # Students of a version, on an operator's request (policy `compress`; flows/compress.py).
    ("flows/compress.py:compress_flow", "manual", {}),
    # Weekly: what was stored before redaction existed, or landed by hand, is found and reported.
    ("flows/ingest.py:redact_check_flow", "weekly-scan", {"cron": "0 3 * * 0"}),
    # Daily, after the 02:00 round and the Sunday 03:00 scan: old versions' bulk and quarantine
    # copies beyond the policy's `retention` (flows/gc.py).
    ("flows/gc.py:gc_flow", "daily", {"cron": "0 4 * * *"}),
]


def continual_options(project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """Parameters, triggers and concurrency of `project`'s `continual` deployment (also used by tests).

    The triggers match only events labelled with `project`; the concurrency limit of 1 is this
    deployment's own, so it holds back only this project's rounds.
    """
    from prefect.events import DeploymentEventTrigger

    from flows.events import DATA_LANDED, DRIFT_DETECTED, PROJECT_LABEL

    def on(event: str, trigger: str) -> DeploymentEventTrigger:
        return DeploymentEventTrigger(
            name=f"{event} -> continual" + ("" if project == DEFAULT_PROJECT else f" ({project})"),
            expect={event},
            match={"prefect.resource.id": "tuneloop.*", PROJECT_LABEL: project},
            parameters={"trigger": trigger, "project": project},
        )

    return {
        "parameters": {"trigger": "schedule", "project": project},
        "triggers": [on(DATA_LANDED, "data"), on(DRIFT_DETECTED, "drift")],
        "concurrency_limit": 1,
    }


def options(entrypoint: str, schedule: dict[str, Any], project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """Every option of one deployment of `project`: schedule, parameters, tags (and continual's own)."""
    extra = continual_options(project) if entrypoint.endswith(":continual_flow") else {}
    parameters = {**extra.pop("parameters", {}), "project": project}
    return {**schedule, **extra, "parameters": parameters, "tags": ["tuneloop", f"project:{project}"]}


def deployment_name(name: str, project: str) -> str:
    """`name` for the default project (today's names hold), `name-<project>` for another."""
    return name if project == DEFAULT_PROJECT else f"{name}-{project}"


@dataclass(frozen=True)
class Planned:
    """One deployment of one project: `base` is its DEPLOYMENTS name (flows/resources.py's key)."""

    project: str
    entrypoint: str
    base: str
    name: str
    options: dict[str, Any]


def declared_projects() -> list[str]:
    """The default project and every declared one (the projects file of the loop's settings)."""
    from tuneloop.config import load_settings
    from tuneloop.projects import project_names

    return project_names(load_settings())


def planned_deployments(projects: Sequence[str] | None = None) -> list[Planned]:
    """Every deployment of every project (default: the declared ones), from DEPLOYMENTS."""
    names = declared_projects() if projects is None else list(projects)
    return [
        Planned(
            project, entrypoint, base, deployment_name(base, project), options(entrypoint, sched, project)
        )
        for project in names
        for entrypoint, base, sched in DEPLOYMENTS
    ]


def runner_deployments() -> list[Any]:
    """Every deployment as a RunnerDeployment of the flows imported here (for `serve`)."""
    from flows.compress import compress_flow
    from flows.continual import continual_flow
    from flows.gc import gc_flow
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
        "gc_flow": gc_flow,
        "compress_flow": compress_flow,
    }
    return [
        flows[p.entrypoint.split(":")[1]].to_deployment(name=p.name, **p.options)
        for p in planned_deployments()
    ]


def refuse_serve(existing: Mapping[str, str | None], replace: bool) -> str | None:
    """Why serving here must not go ahead, or None.

    `existing`: the deployments of the names `serve` registers that the server already has,
    "flow/deployment" -> its work pool (None for one a process serves). Serving upserts them by
    name, schedules and triggers included, so a laptop pointed at the cluster's server would take
    over the cluster's deployments. One on a work pool is refused unless `replace`.
    """
    pooled = {name: pool for name, pool in existing.items() if pool}
    if not pooled or replace:
        return None
    pools = sorted(set(pooled.values()))
    return (
        f"the Prefect server already has {', '.join(sorted(pooled))} on work pool "
        f"{', '.join(pools)}: serving here would take them over (schedules and triggers included). "
        "Point PREFECT_API_URL at another server (`prefect server start` for a local one), or pass "
        "--replace to take them over anyway."
    )


async def read_existing_deployments(names: Iterable[str]) -> dict[str, str | None]:
    """{"flow/deployment": work pool or None} for those of `names` the server has."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: dict[str, str | None] = {}
    async with get_client() as client:
        for name in names:
            try:
                deployment = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            found[name] = deployment.work_pool_name
    return found


async def delete_deployments(names: Iterable[str]) -> None:
    """Delete deployments by "flow/deployment" name (`--replace`: see `serve_all`)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for name in names:
            await client.delete_deployment((await client.read_deployment_by_name(name)).id)


def serve_all(replace: bool = False) -> None:
    """Serve every deployment in the foreground until interrupted (`tuneloop worker`).

    Refused when the server has deployments of these names on a work pool (`refuse_serve`). With
    `replace` those are deleted first: Prefect's upsert by name keeps an existing deployment's work
    queue, so a served deployment left on the pool's queue would send runs to both.
    """
    from prefect import serve

    deployments = runner_deployments()
    existing = asyncio.run(read_existing_deployments(f"{d.flow_name}/{d.name}" for d in deployments))
    refusal = refuse_serve(existing, replace)
    if refusal:
        raise SystemExit(f"serve: {refusal}")
    pooled = [name for name, pool in existing.items() if pool]
    if pooled:
        print(f"serve: --replace: deleting {', '.join(pooled)} (on a work pool) first", file=sys.stderr)
        asyncio.run(delete_deployments(pooled))
    serve(*deployments)


def apply_pool_template(name: str, template_path: Path, image: str | None) -> str:
    """`pool` mode: pin the template (refusing what is unpinned) and bring the pool to it."""
    from flows.pool import PoolError, apply_pool, pin_template

    pinned, problems = pin_template(json.loads(template_path.read_text()), image)
    if problems:
        raise PoolError(f"{template_path}: " + "; ".join(problems))
    return asyncio.run(apply_pool(name, pinned))


def deploy_all(pool: str, image: str | None, profile: str) -> None:
    """`deploy` mode: every deployment on `pool`, with its profile's CPU and memory when the pool's
    template has those variables (a process pool has none)."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.resources import KEYS, check_job_variables, job_variables

    with get_client(sync_client=True) as client:
        template = client.read_work_pool(pool).base_job_template
    declared = set(template.get("variables", {}).get("properties", {}))
    if image and "image" not in declared:
        raise SystemExit(
            f"deploy: pool {pool!r} has no `image` variable: its template pins the image "
            "(`flows/deploy.py pool --image`); drop --image"
        )
    sized = set(KEYS) <= declared
    if not sized:
        print(f"deploy: pool {pool!r} has no CPU/memory variables: deployments get none", file=sys.stderr)
    for planned in planned_deployments():
        variables = job_variables(planned.entrypoint, planned.base, profile) if sized else {}
        problems = check_job_variables(template, variables)
        if problems:
            raise SystemExit(f"deploy: {planned.entrypoint} {planned.name}: " + "; ".join(problems))
        remote = flow.from_source(source=str(REPO), entrypoint=planned.entrypoint)
        remote.deploy(
            name=planned.name,
            work_pool_name=pool,
            job_variables=variables,
            build=False,
            push=False,
            **({"image": image} if image else {}),
            **planned.options,
        )


def main(argv: list[str] | None = None) -> None:
    from flows.resources import PROFILES

    parser = argparse.ArgumentParser(
        prog="flows/deploy.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    serve = modes.add_parser("serve", help="serve every deployment from this process")
    serve.add_argument(
        "--replace",
        action="store_true",
        help="take over deployments of the same names on a work pool (they are deleted first)",
    )
    deploy = modes.add_parser("deploy", help="register every deployment on a work pool")
    deploy.add_argument("--pool", default="tuneloop-local", help="work pool (default tuneloop-local)")
    deploy.add_argument(
        "--image",
        default=None,
        help="container image, for a pool whose template has an `image` variable (docker); "
        "the Kubernetes pools pin theirs (`pool --image`)",
    )
    deploy.add_argument(
        "--resources",
        choices=PROFILES,
        default="standard",
        help="CPU/memory of each flow-run Job (flows/resources.py): standard (a cluster) or small "
        "(kind on a 4-core 8 GiB laptop); default standard",
    )
    pool = modes.add_parser(
        "pool",
        help="create a Kubernetes work pool with a pinned template, or set the template of one",
        description="Create the Kubernetes work pool NAME with the base job template TEMPLATE, or, if "
        "it exists (a worker started first creates it with Prefect's default template), overwrite its "
        "template; idempotent. The template must write image, namespace, service_account_name and "
        "home_claim as literals, not declare them as job variables (refused, naming them). --image "
        "is written into job_manifest.spec.template.spec.containers[0].image. Run before "
        "`prefect worker start`, e.g. `python /app/flows/deploy.py pool --name tuneloop-k8s "
        "--template /etc/tuneloop/pool/base-job-template.json --image $TUNELOOP_FLOW_IMAGE`.",
    )
    pool.add_argument("--name", required=True, help="work pool name, e.g. tuneloop-k8s")
    pool.add_argument("--template", required=True, type=Path, help="base job template (JSON)")
    pool.add_argument("--image", default=None, help="written into the job's container as a literal")
    args = parser.parse_args(argv)

    if args.mode == "serve":
        serve_all(replace=args.replace)
    elif args.mode == "deploy":
        deploy_all(args.pool, args.image, args.resources)
    else:
        from flows.pool import PoolError

        try:
            outcome = apply_pool_template(args.name, args.template, args.image)
        except PoolError as exc:
            raise SystemExit(f"pool: {exc}") from None
        print(f"pool {args.name}: {outcome}")


if __name__ == "__main__":
    # `python flows/deploy.py` puts flows/ first on sys.path, not the checkout `flows.*` lives in.
    sys.path.insert(0, str(REPO))
    main()
