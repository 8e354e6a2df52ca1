"""What a round records: its MLflow run (params, per-epoch metrics, plots, report, the model
artifacts with checksums), the version's tags, and the idempotent tail of registration (auto-approval
per policy, `challenger` moved only forward); and the summary `tuneloop train --json` prints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.registry.policy import Policy
from tuneloop.registry.store import Registry, VersionInfo, checksums, now_iso
from tuneloop.steps.privacy import personal_data_in
from tuneloop.steps.round_data import RoundData, snapshot_list_tag
from tuneloop.train.config import TrainConfig

MODEL_ARTIFACT = "model"  # run artifact folder registered as the version's source


def version_tags(
    settings: Settings,
    data: RoundData,
    cfg: TrainConfig,
    key: str,
    parent: str | None,
    candidate: Any,
    decision: Any,
    result: Any,
) -> dict[str, str]:
    tags = {
        "data_snapshot": data.snapshot_id,
        "data_snapshots": snapshot_list_tag(data.snapshot_ids),
        "parent_version": parent or "none",
        "base_model": cfg.base_model,
        "round_key": key,
        "gate": "passed" if decision.passed else "failed",
        "gate_reasons": json.dumps(_fit_tag(decision.reasons)),
        "approval": "pending",
        "labels": str(len(result.labels)),
        "replay_rows": str(len(data.replay)),
        "replay_sha256": data.replay_manifest.get("sha256", ""),
        "created_at": now_iso(),
        # Counts only: what ingest redacted from the rows this version trained on as new data.
        "personal_data": json.dumps(personal_data_in(settings.snapshots_dir, data.snapshot_ids)),
    }
    for set_name, scores in candidate.whole_sets().items():
        tags[f"metric.{set_name}.macro_f1"] = f"{scores.macro_f1:.4f}"
        tags[f"metric.{set_name}.accuracy"] = f"{scores.accuracy:.4f}"
    return tags


def _fit_tag(reasons: list[str], limit: int = 4800) -> list[str]:
    """Keep whole reasons while the JSON fits an MLflow tag (5,000 characters); say how many were cut."""
    kept: list[str] = []
    for i, reason in enumerate(reasons):
        if len(json.dumps([*kept, reason])) > limit - 40:
            return [*kept, f"... and {len(reasons) - i} more (see report/gate.json on the run)"]
        kept.append(reason)
    return kept


def challenger_moves_to(version: str, challenger: str | None, champion: str | None) -> bool:
    """Whether `challenger` may point at `version`: only forward, past the challenger and champion.

    A re-run of an old round finds its old version; pointing the alias there would move it
    backwards, over a newer candidate (or offer a version older than what already serves).
    """
    floor = max((int(v) for v in (challenger, champion) if v is not None), default=0)
    return int(version) > floor


def finish_registration(registry: Registry, info: VersionInfo, policy: Policy) -> None:
    """Idempotent tail of a round: auto-approval per policy, and `challenger` moved forward only."""
    if not info.gate_passed:
        return
    with registry.lock("aliases"):
        info = registry.get_version(info.version)  # fresh: a person may have rejected it meanwhile
        if info.approval == "rejected":
            return
        if policy.approval.auto_approve and info.approval == "pending":
            registry.set_tags(
                info.version,
                {"approval": "approved", "approval_by": "policy:auto_approve", "approval_at": now_iso()},
            )
        current, champion = registry.alias("challenger"), registry.alias("champion")
        if challenger_moves_to(
            info.version, current.version if current else None, champion.version if champion else None
        ):
            registry.set_alias("challenger", info.version)


def round_summary(info: VersionInfo, reused: bool) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for key, value in info.tags.items():
        if key.startswith("metric."):
            set_name, metric = key[len("metric.") :].split(".", 1)
            metrics.setdefault(set_name, {})[metric] = float(value)
    return {
        "version": info.version,
        "run_id": info.run_id,
        "data_snapshot": info.tags.get("data_snapshot"),
        "parent_version": info.tags.get("parent_version"),
        "metrics": {"macro_f1": metrics.get("new", {}).get("macro_f1"), **metrics},
        "gate": {"passed": info.gate_passed, "reasons": json.loads(info.tags.get("gate_reasons", "[]"))},
        "approval": info.approval,
        "aliases": info.aliases,
        "reused": reused,
    }


def log_round(
    registry: Registry,
    settings: Settings,
    data: RoundData,
    cfg: TrainConfig,
    result: Any,
    candidate: Any,
    baseline: Any,
    decision: Any,
    work: Path,
    merged: Path,
    parent: str | None,
) -> str:
    """One MLflow run with everything a reviewer needs in the UI, and the model artifacts."""
    import mlflow

    from tuneloop.evaluate import plots
    from tuneloop.registry.store import log_snapshot_inputs

    report_dir = work / "report"
    shutil.rmtree(report_dir, ignore_errors=True)
    report_dir.mkdir(parents=True)
    with mlflow.start_run(
        experiment_id=registry.experiment_id(settings.experiment),
        run_name=f"round {data.snapshot_id} <- v{parent or 'base'}",
        tags={
            "tuneloop.kind": "train",
            "data_snapshot": data.snapshot_id,
            "data_snapshots": snapshot_list_tag(data.snapshot_ids),
            "parent_version": parent or "none",
        },
    ) as run:
        mlflow.log_params(
            {
                **cfg.to_dict(),
                "labels": len(result.labels),
                "train_rows": len(data.train),
                "replay_rows": len(data.replay),
                "parent_version": parent or "none",
                "data_snapshots": snapshot_list_tag(data.snapshot_ids),
            }
        )
        for record in result.history:
            epoch = int(record["epoch"])
            mlflow.log_metrics(
                {f"epoch.{k}": float(v) for k, v in record.items() if k != "epoch"}, step=epoch
            )
        personal = personal_data_in(settings.snapshots_dir, data.snapshot_ids)
        mlflow.log_metrics({f"personal_data.{entity}": float(n) for entity, n in personal.items()})
        mlflow.log_metrics(
            {
                "train_seconds": result.train_seconds,
                "trainable_params": result.trainable_params,
                "trainable_share": result.trainable_params / max(result.total_params, 1),
                "best_epoch": result.best_epoch,
            }
        )
        for set_name, scores in candidate.whole_sets().items():
            mlflow.log_metrics(
                {f"{set_name}.macro_f1": scores.macro_f1, f"{set_name}.accuracy": scores.accuracy}
            )
            fig = plots.confusion_matrix_figure(
                scores, f"{set_name}: candidate (snapshot {data.snapshot_id})"
            )
            plots.save_figure(fig, report_dir / f"confusion_{set_name}.png")
        for sid, scores in candidate.parts("new").items():  # each trained snapshot on its own rows
            mlflow.log_metrics({f"new.{sid}.macro_f1": scores.macro_f1, f"new.{sid}.rows": scores.n})
        if baseline is not None:
            for set_name, scores in baseline.whole_sets().items():
                mlflow.log_metrics({f"champion.{set_name}.macro_f1": scores.macro_f1})
        table = plots.per_label_table(candidate, baseline)
        table.to_csv(report_dir / "per_label.csv", index=False)
        mlflow.log_table(table, "report/per_label.json")
        if baseline is not None:
            plots.save_figure(
                plots.backward_transfer_figure(candidate, baseline), report_dir / "backward_transfer.png"
            )
        (report_dir / "gate.json").write_text(json.dumps(decision.model_dump(mode="json"), indent=2))
        (report_dir / "replay_manifest.json").write_text(json.dumps(data.replay_manifest, indent=2))
        (report_dir / "train_history.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
        mlflow.log_artifacts(str(report_dir), "report")
        for sid in data.snapshot_ids:
            log_snapshot_inputs(settings.snapshots_dir / sid, sid, ("train", "eval"))

        model_dir = work / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.copytree(result.adapter_dir, model_dir / "adapter")
        shutil.copytree(merged, model_dir / "merged")
        (model_dir / "replay_manifest.json").write_text(json.dumps(data.replay_manifest, indent=2))
        # The MLmodel (models-from-code, no pickle) goes in before the checksums so they cover it;
        # it picks ONNX INT8, ONNX fp32 or PyTorch at load from the version's tags, so the folder
        # never changes.
        from tuneloop.steps.mlflow_model import write_pyfunc

        write_pyfunc(model_dir, settings.model_name, str(run.info.run_id), cfg.max_length)
        (model_dir / "checksums.json").write_text(json.dumps(checksums(model_dir), indent=2))
        mlflow.log_artifacts(str(model_dir), MODEL_ARTIFACT)
        return str(run.info.run_id)
