"""Flow `compress`: depth students of a version, distilled from its logits, judged against it and
recorded on it (the same step as `tuneloop compress`).

Manual (flows/deploy.py): an operator runs it on a version. Each student, passed or refused, is
logged under the version's run (`students/<n>L/`) and the version's `students` tag is written last;
nothing is served from here. A retry is safe: a re-run records to fresh folders (`students/<n>L.2`)
and never writes into one a tag may name.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from tuneloop.config import DEFAULT_PROJECT, load_settings
from tuneloop.steps.compress import compress_step


@task(name="compress-version", retries=1, retry_delay_seconds=30)
def compress_task(version: str, project: str) -> dict[str, Any]:
    return compress_step(load_settings(project=project), version)


@flow(name="compress", log_prints=True)
def compress_flow(version: str, project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """Build, distil, judge and record the depth students of `project`'s `version` (policy `compress`)."""
    result = compress_task(version, project)
    for student in result["students"]:
        if "skipped" in student:
            line = f"skipped: {student['skipped']}"
        else:
            verdict = "passed" if student["passed"] else "refused: " + "; ".join(student["reasons"])
            line = f"{verdict}; recorded at {student.get('recorded', {}).get('path')}"
        get_run_logger().info(f"v{result['version']} {student['depth']}-layer student {line}")
    return result
