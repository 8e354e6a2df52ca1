"""What this process may use of the machine: cores from the CPU affinity and the cgroup quota.

`os.sched_getaffinity` (and ONNX Runtime's and torch's own defaults) see every core of the node: a
container limited to 2 CPUs on a 64-core node would start 64 spinning intra-op threads per loaded
model and spend its quota in throttling. The quota is in the cgroup: v2 `cpu.max` ("200000 100000"
is 2 CPUs), v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; "max" or -1 means no limit.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """CPUs the cgroup quota allows (2.0 for `200000 100000`), or None without a quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # cgroup v2
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def usable_cores(root: Path = CGROUP) -> int:
    """Cores to size thread pools by: the affinity, capped by the cgroup quota rounded up (>= 1)."""
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)
