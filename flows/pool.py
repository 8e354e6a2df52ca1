"""A Kubernetes work pool's base job template, pinned, and the pool brought to it.

`python flows/deploy.py pool --name tuneloop-k8s --template PATH [--image IMAGE]` runs this before
the worker starts (the prefect-worker Deployment's initContainer). Order matters: a worker started on
a pool that does not exist creates it with Prefect's default Kubernetes template (namespace
`default`, any image), after which `prefect work-pool create --base-job-template` only fails
"already exists". So this creates the pool with our template, or overwrites the template of a pool
that exists, whoever created it; run again, it changes nothing.

Pinned: the flow-run Job runs with the trainer's credentials (MLflow, the service token), so what it
runs must not be a deployment's choice. A job variable is a deployment's choice: anyone holding the
Prefect auth string can register a deployment with `job_variables={"image": ...}`. The image, the
namespace, the service account and the state volume's claim are therefore literals in the template,
never variables; a template that still declares one of them is refused, naming it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

# Literals in the template, never job variables (see the module docstring).
PINNED_VARIABLES = ("image", "namespace", "service_account_name", "home_claim")
POOL_TYPE = "kubernetes"


def pin_template(template: dict[str, Any], image: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The template with `image` written into the job's container, and what is wrong with it.

    Pure: nothing is read or sent. Problems (an empty list when the template may be applied): a pinned
    name declared as a variable or still used as a `{{ placeholder }}`, no literal namespace, no
    container, and no literal image when `image` is not given.
    """
    from prefect.utilities.templating import find_placeholders

    pinned = copy.deepcopy(template)
    config = pinned.get("job_configuration")
    variables = pinned.get("variables")
    if not isinstance(config, dict) or not isinstance(variables, dict):
        return pinned, ["the template needs a `job_configuration` and a `variables` object"]

    problems: list[str] = []
    containers = (
        config.get("job_manifest", {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    )
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        problems.append("job_configuration.job_manifest.spec.template.spec.containers has no container")
    elif image is not None:
        if not image.strip() or any(c.isspace() for c in image) or "{{" in image:
            problems.append(f"--image {image!r} is not an image reference")
        else:
            containers[0]["image"] = image
    if not problems:
        current = containers[0].get("image")
        if not isinstance(current, str) or not current or "{{" in current:
            problems.append("the job's container has no literal image: pass --image")

    declared = [name for name in PINNED_VARIABLES if name in variables.get("properties", {})]
    if declared:
        problems.append(
            f"the template declares {', '.join(declared)} as job variables: a deployment could set "
            "them and run its own choice with the trainer's credentials; write them as literals in "
            "job_configuration and drop them from `variables`"
        )
    used = sorted({p.name for p in find_placeholders(config)} & set(PINNED_VARIABLES))
    if used:
        problems.append(
            "job_configuration still uses "
            + ", ".join("{{ " + name + " }}" for name in used)
            + ": write the value itself"
        )
    namespace = config.get("namespace")
    if not isinstance(namespace, str) or not namespace or "{{" in namespace:
        problems.append("job_configuration.namespace must be a literal namespace (else Jobs go to `default`)")
    return pinned, problems


def describe_difference(current: dict[str, Any], wanted: dict[str, Any]) -> str:
    """'unchanged', or which top-level parts of the template differ (for the log line)."""
    if _canonical(current) == _canonical(wanted):
        return "unchanged"
    parts = []
    for section in ("job_configuration", "variables"):
        old, new = current.get(section) or {}, wanted.get(section) or {}
        parts += [
            f"{section}.{k}" for k in sorted({*old, *new}) if _canonical(old.get(k)) != _canonical(new.get(k))
        ]
    return "changed: " + (", ".join(parts) or "template")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


async def apply_pool(name: str, template: dict[str, Any]) -> str:
    """Create the Kubernetes pool `name` with `template`, or set the template of the pool that exists.

    Returns "created", "updated (...)" or "unchanged". Only the template is written: a pool's pause,
    concurrency limit and description stay as an operator left them. A pool of another type is
    refused (Prefect cannot change a pool's type).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    async with get_client() as client:
        try:
            existing = await client.read_work_pool(name)
        except ObjectNotFound:
            try:
                await client.create_work_pool(
                    WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template)
                )
                return "created"
            except ObjectAlreadyExists:  # a worker created it meanwhile: repair it below
                existing = await client.read_work_pool(name)
        if existing.type != POOL_TYPE:
            raise PoolError(
                f"work pool {name!r} exists with type {existing.type!r}, not {POOL_TYPE!r}: "
                f"delete it (`prefect work-pool delete {name}`) and run this again"
            )
        difference = describe_difference(existing.base_job_template, template)
        if difference == "unchanged":
            return difference
        await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))
        return f"updated ({difference})"


class PoolError(RuntimeError):
    """The pool cannot be brought to the template (a template problem, or a pool of another type)."""
