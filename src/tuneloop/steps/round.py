"""Step: one continual training round, from a snapshot to a registered, gated model version.

    snapshots new to the champion ──┐
    champion ───────────────────────┼─> replay sample ─> LoRA round (from the champion's adapter)
    snapshots it has seen ──────────┘        │
                        └─> score candidate and champion on new eval, golden and union
                              └─> gates (policy) ─> MLflow run + model version (+ `challenger`)

A round is identified by `round_key` = hash(content of its snapshots, parent adapter sha256, train
config, policy gates; see round_data.py). Find, train and register run under the registry lock
`round-<key>`, so two runs of one round (a retry, a schedule and a manual run) register one version
and the other returns it. Training resumes from its checkpoints under `<home>/work/rounds/<key>/`,
a folder touched only under that lock: kept when a round fails, removed once its version is
registered, and what failed rounds left is pruned by later ones (scratch.py). What a round records
(its MLflow run, the version's tags, the `challenger` move) is round_record.py's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.data import snapshot as snap
from tuneloop.files import sha256_file
from tuneloop.registry.policy import Policy, check_policy_fits_data, load_policy
from tuneloop.registry.store import Registry, RegistryError, VersionInfo
from tuneloop.registry.verify import MANIFEST, MANIFEST_TAG
from tuneloop.steps.exclusions import excluded_snapshots
from tuneloop.steps.round_data import (
    RoundData,
    SnapshotPlan,
    content_hashes,
    load_round_data,
    plan_round,
    round_key,
    round_label_set,
)
from tuneloop.steps.round_record import (
    MODEL_ARTIFACT,
    finish_registration,
    log_round,
    round_summary,
    version_tags,
)
from tuneloop.steps.scratch import Scratch
from tuneloop.train.config import TrainConfig

# How long a second run of the same round waits for the first to finish before failing: a nightly
# round on CPU takes minutes (BANKING77 on MiniLM: about 10) up to an hour; the holder renews its
# lease while it trains, so waiting 2 h x 3,600 = 7,200 s outlasts any round that is still alive.
ROUND_LOCK_WAIT_S = 7200.0


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
        "continued_epochs": settings.continued_epochs,
        "batch_size": settings.batch_size,
        "max_length": settings.max_length,
        "patience": settings.patience,
        "seed": settings.seed,
        "device": settings.device,
        "replay_fraction": settings.replay_fraction,
        "replay_per_label": settings.replay_per_label,
        "distill_weight": settings.distill_weight,
        "distill_temperature": settings.distill_temperature,
        "balance_labels": settings.balance_labels,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("epochs") is not None and overrides.get("continued_epochs") is None:
        # `--epochs N` (CLI and flows) means "at most N epochs this round", continued or not.
        values["continued_epochs"] = overrides["epochs"]
    return TrainConfig.from_dict(values)


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


def eval_groups(data: RoundData) -> dict[str, list[str]]:
    """The snapshot each new eval row came from: the gates judge every snapshot on its own rows too."""
    return {"new": data.new_eval["snapshot"].tolist()} if not data.new_eval.empty else {}


def gate_seed(key: str) -> int:
    """The bootstrap seed of a round's gates: its key, so a verdict depends on what it compares."""
    return int(key[:8], 16)


def train_step(
    settings: Settings,
    snapshot_id: str | None = None,
    progress: bool = True,
    policy: Policy | None = None,
    **config_overrides: Any,
) -> dict[str, Any]:
    """Train, evaluate, gate and register one round; return what `tuneloop train --json` prints."""
    if settings.golden_per_label == 0:
        # No golden set means forgetting cannot be judged: every gate that needs it fails closed, so
        # each round would train for nothing and be refused. Refuse before any work, and say why.
        raise ValueError(
            "golden_per_label is 0, so there is no golden set and no round can pass the gates "
            "(forgetting and the union score cannot be judged); set golden_per_label >= 1 "
            "(TUNELOOP_GOLDEN_PER_LABEL) before ingesting."
        )
    policy = policy or load_policy(settings.policy_path)
    check_policy_fits_data(policy, settings.golden_per_label, settings.policy_path)
    registry = Registry(settings)
    snapshot_id = snapshot_id or latest_snapshot(settings)
    cfg = train_config(settings, **config_overrides)
    champion = registry.alias("champion")
    excluded = excluded_snapshots(settings)
    plan = plan_round(settings.snapshots_dir, snapshot_id, _parent_snapshot(champion), excluded)
    key = round_key(
        content_hashes(settings.snapshots_dir, plan.new),
        content_hashes(settings.snapshots_dir, plan.seen),
        _parent_adapter_sha256(champion),
        cfg,
        policy.gates.model_dump(mode="json"),
    )
    scratch = Scratch.of(settings, registry, "rounds", "round-")
    info = registry.find_by_round_key(key)
    reused = True
    if info is None:
        # Find, train and register under one lock, checking again inside it: a scheduled run and a
        # manual run of the same round otherwise both register, and both write the work folder.
        with registry.lock(f"round-{key}", timeout_s=ROUND_LOCK_WAIT_S):
            info = registry.find_by_round_key(key)
            if info is None:
                reused = False
                try:
                    info = _train_and_register(registry, settings, plan, cfg, champion, key, policy, progress)
                    finish_registration(registry, info, policy)
                except Exception as exc:
                    scratch.keep(key, exc)  # a retry resumes from its checkpoints there
                    raise
                # The version, its tags and the challenger move are in the registry: a retry finds
                # the version and never resumes from this folder again.
                scratch.remove_held(key)
    if reused:
        finish_registration(registry, info, policy)
        scratch.remove(key)  # one a run that crashed after registering left behind
    scratch.prune()
    return round_summary(registry.get_version(info.version), reused=reused)


def _parent_snapshot(champion: VersionInfo | None) -> str | None:
    if champion is None:
        return None
    newest = champion.tags.get("data_snapshot")
    if not newest:
        raise RegistryError(
            f"champion v{champion.version} has no data_snapshot tag, so the snapshots it has not seen "
            "cannot be told apart; it was not registered by `tuneloop train`."
        )
    return newest


def _parent_adapter_sha256(champion: VersionInfo | None) -> str | None:
    if champion is None:
        return None
    sha = champion.tags.get("adapter_sha256")
    if not sha:
        raise RegistryError(
            f"champion v{champion.version} has no adapter_sha256 tag: its adapter cannot be verified, "
            "so no round continues from it."
        )
    return sha


def _train_and_register(
    registry: Registry,
    settings: Settings,
    plan: SnapshotPlan,
    cfg: TrainConfig,
    champion: VersionInfo | None,
    key: str,
    policy: Policy,
    progress: bool,
) -> VersionInfo:
    """The body of a round; call it only while holding the round's lock (it owns the work folder)."""
    from tuneloop.evaluate.gates import decide_gates
    from tuneloop.evaluate.report import build_report
    from tuneloop.train.trainer import train_round

    parent = champion.version if champion else None
    work = settings.work_dir / "rounds" / key
    data = load_round_data(settings, plan, cfg)
    parent_adapter = None
    parent_labels: list[str] = []
    if champion is not None:
        from tuneloop.train.model import read_labels

        shutil.rmtree(work / "parent", ignore_errors=True)
        # verify=True: the sha256 of every downloaded file against checksums.json (itself against
        # the checksums_sha256 tag) and the adapter_sha256 tag; a round never continues from
        # weights or labels that are not the registered ones.
        parent_adapter = registry.download(champion.version, "adapter", work / "parent", verify=True)
        parent_labels = read_labels(parent_adapter)
    labels = round_label_set(parent_labels, data)

    result = train_round(data.train, data.stop_eval, labels, work, cfg, parent_adapter, progress=progress)

    sets = eval_sets(data)
    candidate = build_report(
        predictor(result.adapter_dir, cfg.max_length),
        sets,
        result.labels,
        model_labels=result.labels,
        groups=eval_groups(data),
    )
    baseline = None
    if parent_adapter is not None:
        baseline = build_report(
            predictor(parent_adapter, cfg.max_length),
            sets,
            result.labels,
            version=parent,
            model_labels=parent_labels,
        )
    decision = decide_gates(candidate, baseline, policy.gates, seed=gate_seed(key))

    from tuneloop.train.predict import merge_adapter

    merged = merge_adapter(result.adapter_dir, work / "merged")
    run_id = log_round(
        registry, settings, data, cfg, result, candidate, baseline, decision, work, merged, parent
    )
    tags = version_tags(settings, data, cfg, key, parent, candidate, decision, result)
    sums = json.loads((work / "model" / "checksums.json").read_text())
    tags["adapter_sha256"] = sums["adapter/adapter_model.safetensors"]
    tags["merged_sha256"] = sums["merged/model.safetensors"]
    # The manifest's own anchor, in the registry apart from the artifacts it vouches for (verify.py).
    tags[MANIFEST_TAG] = sha256_file(work / "model" / MANIFEST)
    info = registry.register(run_id, MODEL_ARTIFACT, tags)
    shutil.rmtree(work / "parent", ignore_errors=True)
    return info
