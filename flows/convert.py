"""Flow `convert`: ONNX, INT8 and (on GPUs) TensorRT artifacts for a version, gated by parity.

Idempotent: a version already converted with the same key (model, data, settings, thresholds,
converter, TensorRT host) returns its recorded result. The TensorRT line says built, skipped: why,
or failed: why (a failed engine is never published; the CPU artifacts still are).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from tuneloop.config import DEFAULT_PROJECT, load_settings
from tuneloop.steps.convert import convert_step


@task(name="convert-version", retries=1, retry_delay_seconds=30)
def convert_task(version: str, calibrate: bool, tensorrt: str, project: str) -> dict[str, Any]:
    return convert_step(load_settings(project=project), version, calibrate=calibrate, tensorrt=tensorrt)


@flow(name="convert", log_prints=True)
def convert_flow(
    version: str, calibrate: bool = True, tensorrt: str = "auto", project: str = DEFAULT_PROJECT
) -> dict[str, Any]:
    """Convert `project`'s `version`; the parity verdict is recorded on the version (tag `conversion`)."""
    result = convert_task(version, calibrate, tensorrt, project)
    verdict = "passed" if result["parity"]["passed"] else "failed: " + "; ".join(result["parity"]["reasons"])
    get_run_logger().info(f"v{version} conversion {verdict}; TensorRT: {result['tensorrt']['status']}")
    return result
