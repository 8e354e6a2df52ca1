"""CPU and memory of each deployment's flow-run Job, per cluster profile, as work-pool job variables.

Without these every flow got the pool template's default (2 CPU / 6 GiB requested), so the
10-minute `watch` held a training job's share of the cluster for a few seconds of HTTP and
arithmetic. `python flows/deploy.py deploy --resources standard|small` picks a profile; the
variable names (`cpu_request`, `memory_request`, `cpu_limit`, `memory_limit`) are the pool
template's (infra/prefect/base-job-template.json).

Memory requests and limits are sized on the process: Python with Prefect, MLflow and pandas imported
is ~0.3-0.4 GiB before any work, torch with transformers another ~0.5 GiB, MiniLM (22.7M parameters,
~90 MB in fp32) and the LoRA round's optimizer state and activations (batch 32) little beside that;
the round also exports ONNX and builds the int8 model, each a further copy of the weights.
"""

from __future__ import annotations

import re
from typing import Any

PROFILES = ("standard", "small")
KEYS = ("cpu_request", "memory_request", "cpu_limit", "memory_limit")


def _res(cpu_request: str, memory_request: str, cpu_limit: str, memory_limit: str) -> dict[str, str]:
    return dict(zip(KEYS, (cpu_request, memory_request, cpu_limit, memory_limit), strict=True))


# standard: a cluster with room. Training keeps the template's defaults (2 cores are what a LoRA
# round on MiniLM uses well: torch's intra-op threads past 2 gain little at batch 32; 6 GiB leaves a
# bigger base model or snapshot room to grow). The rest request what their process needs.
_TRAINING = _res("2", "6Gi", "4", "8Gi")
STANDARD: dict[tuple[str, str], dict[str, str]] = {
    ("flows/continual.py:continual_flow", "loop"): _TRAINING,
    ("flows/train.py:train_flow", "manual"): _TRAINING,
    # Distils every student in full (all weights, not LoRA) on the round's rows, with the teacher
    # loaded beside it: a training job.
    ("flows/compress.py:compress_flow", "manual"): _TRAINING,
    # A drop through validation and redaction (~0.1 ms a text on one core: 10,000 rows ~1 s) in
    # pandas: half a core, 1 GiB for the interpreter and a drop of tens of thousands of rows.
    ("flows/ingest.py:ingest_flow", "landing-poll"): _res("500m", "1Gi", "2", "2Gi"),
    # Reads every snapshot, quarantine and landing file once a week: the same work as ingest, more of it.
    ("flows/ingest.py:redact_check_flow", "weekly-scan"): _res("500m", "2Gi", "2", "3Gi"),
    # One GET of /metrics per replica and the drift arithmetic, every 10 minutes: the interpreter.
    ("flows/watch.py:watch_flow", "service"): _res("100m", "512Mi", "500m", "1Gi"),
    # A registry tag (approve) or a ledger line (exclude): the interpreter.
    ("flows/train.py:approve_flow", "manual"): _res("100m", "512Mi", "500m", "1Gi"),
    ("flows/ingest.py:exclude_flow", "manual"): _res("100m", "512Mi", "500m", "1Gi"),
    # Lists each version's artifacts and deletes some (one request each): the interpreter and MLflow.
    ("flows/gc.py:gc_flow", "daily"): _res("100m", "512Mi", "500m", "1Gi"),
}

# The laptop the `small` profile is for: kind on a 4-core, 8 GiB machine running the local overlay.
LAPTOP_CPU, LAPTOP_MEMORY_GIB = 4.0, 8.0
# The node itself: kubelet, containerd and kind's control plane (its kube-system pods alone request
# ~0.95 CPU: apiserver 250m, controller-manager 200m, 2 x coredns 100m, etcd, scheduler, kindnet).
NODE_RESERVED_CPU, NODE_RESERVED_MEMORY_GIB = 1.0, 1.0
# The local overlay's other pods (infra/k8s/overlays/local/small.yaml): 650m and 2,304 MiB requested.
OVERLAY_CPU, OVERLAY_MEMORY_GIB = 0.7, 2.3
# Left for flow-run Jobs: 4 - 1 - 0.7 = 2.3 CPU and 8 - 1 - 2.3 = 4.7 GiB.

# small: everything scheduled at once (the nightly round, a landing poll, a watch, the Sunday
# scan and the daily gc: 1 + 0.25 + 0.05 + 0.25 + 0.05 = 1.6 CPU, 3 + 0.5 + 0.25 + 0.75 + 0.1875 =
# 4.69 GiB requested) fits the 2.3 CPU / 4.7 GiB left, and training's 4 GiB limit fits it alone.
# gc requests 192 MiB, under the interpreter's ~0.3 GiB with MLflow: it runs at 04:00, after the
# round, and its 768 MiB limit is what bounds it. One core makes a round ~2x
# slower than two; 3 GiB holds the round's peak with the exports, 4 GiB lets it overshoot.
_TRAINING_SMALL = _res("1", "3Gi", "2", "4Gi")
_INTERPRETER_SMALL = _res("50m", "256Mi", "500m", "768Mi")
SMALL: dict[tuple[str, str], dict[str, str]] = {
    ("flows/continual.py:continual_flow", "loop"): _TRAINING_SMALL,
    ("flows/train.py:train_flow", "manual"): _TRAINING_SMALL,
    ("flows/compress.py:compress_flow", "manual"): _TRAINING_SMALL,
    ("flows/ingest.py:ingest_flow", "landing-poll"): _res("250m", "512Mi", "1", "1536Mi"),
    ("flows/ingest.py:redact_check_flow", "weekly-scan"): _res("250m", "768Mi", "1", "1536Mi"),
    ("flows/watch.py:watch_flow", "service"): _INTERPRETER_SMALL,
    ("flows/train.py:approve_flow", "manual"): _INTERPRETER_SMALL,
    ("flows/ingest.py:exclude_flow", "manual"): _INTERPRETER_SMALL,
    ("flows/gc.py:gc_flow", "daily"): _res("50m", "192Mi", "500m", "768Mi"),
}
_BY_PROFILE = {"standard": STANDARD, "small": SMALL}


def job_variables(entrypoint: str, name: str, profile: str = "standard") -> dict[str, str]:
    """The work-pool job variables (CPU and memory) of one deployment under a profile."""
    if profile not in _BY_PROFILE:
        raise ValueError(f"unknown resource profile {profile!r}: one of {', '.join(PROFILES)}")
    try:
        return dict(_BY_PROFILE[profile][(entrypoint, name)])
    except KeyError:
        raise ValueError(f"no resources for {entrypoint} {name!r}: add them to flows/resources.py") from None


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?$")
_BINARY = {None: 1 / 2**30, "Ki": 1 / 2**20, "Mi": 1 / 2**10, "Gi": 1.0, "Ti": 2.0**10}


def cpu_cores(quantity: str) -> float:
    """Kubernetes CPU quantity in cores ("500m" -> 0.5, "2" -> 2.0)."""
    match = _CPU.match(quantity)
    if not match:
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    return float(match[1]) / (1000 if match[2] else 1)


def memory_gib(quantity: str) -> float:
    """Kubernetes memory quantity (binary suffixes or bytes) in GiB ("512Mi" -> 0.5)."""
    match = _MEMORY.match(quantity)
    if not match:
        raise ValueError(f"not a memory quantity (Ki, Mi, Gi, Ti or bytes): {quantity!r}")
    return float(match[1]) * _BINARY[match[2]]


def check_job_variables(template: dict[str, Any], variables: dict[str, Any]) -> list[str]:
    """Problems of `variables` against a pool template: its `variables` JSON schema, names it does
    not declare (Prefect would ignore them silently), and a request above its limit (Kubernetes
    refuses such a pod)."""
    import jsonschema

    schema = template.get("variables") or {}
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'.'.join(map(str, e.path)) or 'variables'}: {e.message}" for e in validator.iter_errors(variables)
    ]
    undeclared = sorted(set(variables) - set(schema.get("properties", {})))
    problems += [f"{name}: not a variable of the pool's template" for name in undeclared]
    for measure, to_number in (("cpu", cpu_cores), ("memory", memory_gib)):
        request, limit = variables.get(f"{measure}_request"), variables.get(f"{measure}_limit")
        if isinstance(request, str) and isinstance(limit, str) and to_number(request) > to_number(limit):
            problems.append(f"{measure}_request {request} is above {measure}_limit {limit}")
    return problems
