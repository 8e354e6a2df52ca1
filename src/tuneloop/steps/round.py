"""Step: one continual training round, from a snapshot to a registered, gated model version.

    snapshot ──┐
    champion ──┼─> replay sample ─> LoRA round (continues from the champion's adapter)
    history  ──┘        │
                        └─> score candidate and champion on new eval, golden and union
                              └─> gates (policy) ─> MLflow run + model version (+ `challenger`)

A round is identified by `round_key` = hash(snapshot, parent version, train config); registering
the same round twice returns the existing version, so a retried or resumed flow never makes a
second one. Training itself resumes from its checkpoints under `<home>/work/rounds/<round_key>/`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.config import Settings
from tuneloop.data import snapshot as snap
from tuneloop.registry.policy import Policy, load_policy
from tuneloop.registry.store import Registry, RegistryError, VersionInfo, checksums, now_iso
from tuneloop.train.config import TrainConfig

MODEL_ARTIFACT = "model"  # run artifact folder registered as the version's source


def train_config(settings: Settings, **overrides: Any) -> TrainConfig:
    values = {
        "base_model": settings.base_model,
        "lora_r": settings.lora_r,
        "lora_alpha": settings.lora_alpha,
        "lora_dropout": settings.lora_dropout,
        "target_modules": tuple(settings.lora_target_modules),
        "modules_to_save": tuple(settings.lora_modules_to_save),
        "learning_rate": settings.learning_rate,
        "epochs": settings.epochs,
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "patience": settings.patience,
        "seed": settings.seed,
        "device": settings.device,
        "replay_fraction": settings.replay_fraction,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)


def round_key(snapshot_id: str, parent_version: str | None, cfg: TrainConfig) -> str:
    payload = json.dumps(
        {"snapshot": snapshot_id, "parent": parent_version, "config": cfg.to_dict()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class RoundData:
    snapshot_id: str
    train: pd.DataFrame  # new rows + replayed rows
    new_eval: pd.DataFrame
    stop_eval: pd.DataFrame  # early stopping: new eval + as many earlier eval rows
    golden: pd.DataFrame
    replay: pd.DataFrame
    replay_manifest: dict[str, Any]


def load_round_data(settings: Settings, snapshot_id: str, cfg: TrainConfig) -> RoundData:
    """The snapshot's train rows plus a replay sample of every earlier snapshot's train rows."""
    from tuneloop.train.replay import replay_manifest, select_replay

    folder = settings.snapshots_dir
    new_train = snap.load_split(folder, snapshot_id, "train").assign(snapshot=snapshot_id)
    earlier = [sid for sid in snap.snapshot_ids(folder) if sid < snapshot_id]
    history = snap.load_all(folder, "train", upto=earlier[-1]) if earlier else new_train.iloc[0:0]
    replay = select_replay(history, len(new_train), cfg.replay_fraction, cfg.seed)
    new_eval = snap.load_split(folder, snapshot_id, "eval")
    # Early stopping must see the old labels too: scored on the new eval split alone (a drift batch
    # may hold one new intent), the best epoch is the one that forgets most.
    old_eval = snap.load_all(folder, "eval", upto=earlier[-1]) if earlier else new_eval.iloc[0:0]
    old_eval_sample = select_replay(old_eval, len(new_eval), 1.0, cfg.seed) if earlier else old_eval
    return RoundData(
        snapshot_id=snapshot_id,
        train=pd.concat([new_train, replay], ignore_index=True),
        new_eval=new_eval,
        stop_eval=pd.concat([new_eval, old_eval_sample], ignore_index=True),
        golden=snap.load_golden(folder, upto=snapshot_id),
        replay=replay,
        replay_manifest=replay_manifest(replay),
    )


def latest_snapshot(settings: Settings) -> str:
    ids = snap.snapshot_ids(settings.snapshots_dir)
    if not ids:
        raise FileNotFoundError(
            f"no snapshots under {settings.snapshots_dir}; run `tuneloop ingest FILE` first."
        )
    return ids[-1]


def predictor(adapter_dir: Path, max_length: int) -> Any:
    """A `texts -> predicted labels` function over a saved adapter (what the evaluate stage takes)."""
    from tuneloop.train.model import load_classifier
    from tuneloop.train.predict import predict_logits

    model, tokenizer, labels = load_classifier(adapter_dir)

    def predict(texts: list[str]) -> list[str]:
        logits = predict_logits(model, tokenizer, texts, max_length=max_length)
        return [labels[i] for i in logits.argmax(axis=1)]

    return predict


def eval_sets(data: RoundData) -> dict[str, tuple[list[str], list[str]]]:
    """The new eval split and the golden set; `build_report` adds their union without re-predicting."""
    return {
        name: (frame["text"].tolist(), frame["label"].tolist())
        for name, frame in (("new", data.new_eval), ("golden", data.golden))
        if not frame.empty
    }


def train_step(
    settings: Settings,
    snapshot_id: str | None = None,
    progress: bool = True,
    policy: Policy | None = None,
    **config_overrides: Any,
) -> dict[str, Any]:
    """Train, evaluate, gate and register one round; return what `tuneloop train --json` prints."""
    from tuneloop.evaluate.gates import decide_gates
    from tuneloop.evaluate.report import build_report
    from tuneloop.train.trainer import train_round

    policy = policy or load_policy(settings.policy_path)
    registry = Registry(settings)
    snapshot_id = snapshot_id or latest_snapshot(settings)
    snap.load_manifest(settings.snapshots_dir, snapshot_id)  # clear error for an unknown id
    cfg = train_config(settings, **config_overrides)
    champion = registry.alias("champion")
    parent = champion.version if champion else None
    key = round_key(snapshot_id, parent, cfg)

    existing = registry.find_by_round_key(key)
    if existing is not None:
        finish_registration(registry, existing, policy)
        return round_summary(registry.get_version(existing.version), reused=True)

    work = settings.work_dir / "rounds" / key
    data = load_round_data(settings, snapshot_id, cfg)
    parent_adapter = None
    labels = sorted(set(data.train["label"]))
    if champion is not None:
        parent_adapter = registry.download(champion.version, "adapter", work / "parent")
        from tuneloop.train.model import merge_labels, read_labels

        labels = merge_labels(
            read_labels(parent_adapter), set(data.train["label"]) | set(data.golden["label"])
        )

    result = train_round(data.train, data.stop_eval, labels, work, cfg, parent_adapter, progress=progress)

    sets = eval_sets(data)
    candidate = build_report(
        predictor(result.adapter_dir, cfg.max_length), sets, result.labels, model_labels=result.labels
    )
    baseline = None
    if parent_adapter is not None:
        from tuneloop.train.model import read_labels

        baseline = build_report(
            predictor(parent_adapter, cfg.max_length),
            sets,
            result.labels,
            version=parent,
            model_labels=read_labels(parent_adapter),
        )
    decision = decide_gates(candidate, baseline, policy.gates)

    from tuneloop.train.predict import merge_adapter

    merged = merge_adapter(result.adapter_dir, work / "merged")
    run_id = log_round(
        registry, settings, data, cfg, result, candidate, baseline, decision, work, merged, parent
    )
    tags = version_tags(settings, data, cfg, key, parent, candidate, decision, result)
    sums = json.loads((work / "model" / "checksums.json").read_text())
    tags["adapter_sha256"] = sums["adapter/adapter_model.safetensors"]
    tags["merged_sha256"] = sums["merged/model.safetensors"]
    info = registry.register(run_id, MODEL_ARTIFACT, tags)
    finish_registration(registry, info, policy)
    shutil.rmtree(work / "parent", ignore_errors=True)
    return round_summary(registry.get_version(info.version), reused=False)


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
    }
    for set_name, scores in candidate.sets.items():
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


def finish_registration(registry: Registry, info: VersionInfo, policy: Policy) -> None:
    """Idempotent tail of a round: challenger alias and auto-approval, per policy."""
    if not info.gate_passed:
        return
    if policy.approval.auto_approve and info.approval == "pending":
        registry.set_tags(
            info.version,
            {"approval": "approved", "approval_by": "policy:auto_approve", "approval_at": now_iso()},
        )
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
            }
        )
        for record in result.history:
            epoch = int(record["epoch"])
            mlflow.log_metrics(
                {f"epoch.{k}": float(v) for k, v in record.items() if k != "epoch"}, step=epoch
            )
        mlflow.log_metrics(
            {
                "train_seconds": result.train_seconds,
                "trainable_params": result.trainable_params,
                "trainable_share": result.trainable_params / max(result.total_params, 1),
                "best_epoch": result.best_epoch,
            }
        )
        for set_name, scores in candidate.sets.items():
            mlflow.log_metrics(
                {f"{set_name}.macro_f1": scores.macro_f1, f"{set_name}.accuracy": scores.accuracy}
            )
            fig = plots.confusion_matrix_figure(
                scores, f"{set_name}: candidate (snapshot {data.snapshot_id})"
            )
            plots.save_figure(fig, report_dir / f"confusion_{set_name}.png")
        if baseline is not None:
            for set_name, scores in baseline.sets.items():
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
        log_snapshot_inputs(settings.snapshots_dir / data.snapshot_id, data.snapshot_id, ("train", "eval"))

        model_dir = work / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.copytree(result.adapter_dir, model_dir / "adapter")
        shutil.copytree(merged, model_dir / "merged")
        (model_dir / "replay_manifest.json").write_text(json.dumps(data.replay_manifest, indent=2))
        (model_dir / "checksums.json").write_text(json.dumps(checksums(model_dir), indent=2))
        mlflow.log_artifacts(str(model_dir), MODEL_ARTIFACT)
        return str(run.info.run_id)


def approve_step(
    settings: Settings, version: str, by: str, reject: bool = False, note: str = ""
) -> dict[str, Any]:
    """Record a person's decision on a version, exactly as setting the tag in the MLflow UI does."""
    policy = load_policy(settings.policy_path)
    if policy.approval.approvers and by not in policy.approval.approvers:
        raise RegistryError(
            f"{by!r} is not an approver in {settings.policy_path}: {policy.approval.approvers}"
        )
    registry = Registry(settings)
    info = registry.get_version(version)
    state = "rejected" if reject else "approved"
    registry.set_tags(
        info.version, {"approval": state, "approval_by": by, "approval_at": now_iso(), "approval_note": note}
    )
    registry.record_event(info.version, f"approval.{state}", {"by": by, "note": note})
    if reject and "challenger" in info.aliases:
        registry.clear_alias("challenger")
    return {"version": info.version, "approval": state, "by": by}
