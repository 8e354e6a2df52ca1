"""Step: distilled depth students of a registered version, each judged against the version (its teacher).

    merged model (from the version, sha256-verified) ─> teacher logits on the version's training rows
      └─> per depth in policy `compress.depths`: keep evenly spread layers ─> distil ─> judge on the
          version's eval rows and golden set (policy `compress`, and the gates' per-label limits)

The training rows are the version's own: the train splits of the snapshots it trained on and the
replay sample it drew, rebuilt from its `replay_manifest.json` (checked against its sha256), so a
student learns from exactly what its teacher learnt from, continual-learning rehearsal included.

Each built student, passed or refused, is then recorded on its version (steps/students.py): its
files under `runs:/<run>/students/<n>L/` with their checksums and judgement, and the version tag
`students` last; `download_student` reads one back verified. Nothing here serves a student: the
conversion (steps/convert.py, steps/convert_students.py) converts the passing ones, times them
beside the teacher and publishes the fastest. The work folder `<work_dir>/compress/v<N>/` goes
once the students are recorded and stays when the step fails (scratch.py).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from tuneloop.config import Settings
from tuneloop.data import snapshot as snap
from tuneloop.registry.policy import Policy, load_policy
from tuneloop.registry.policy_data import CompressPolicy
from tuneloop.registry.store import Registry, RegistryError
from tuneloop.steps.scratch import Scratch
from tuneloop.steps.students import WEIGHTS, download_student, record_students

__all__ = ["compress_for_release", "compress_step", "download_student", "load_version_rows"]


def compress_step(settings: Settings, version: str, progress: bool = False) -> dict[str, Any]:
    """Build, distil and judge a depth student of `version` for every depth in the policy.

    Returns a summary: the rows used, the teacher's layers, parameters, bytes and macro-F1, and per
    student its layers, parameters, bytes, macro-F1 against the teacher's on each set, agreement,
    passed, reasons and seconds (a depth not below the teacher's is listed as skipped), and where it
    was recorded on the version (`recorded`: its entry in the `students` tag). Runs whatever
    `compress.enabled` says: that switch is for the loop, this is an operator's request. Serialised
    per version by the registry lock `compress-v<N>`.
    """
    policy = load_policy(settings.policy_path)
    if policy.compress is None:
        raise ValueError(
            f"{settings.policy_path} has no `compress` section, so no student shape or limit is set; "
            "add one (registry/README.md, compress)"
        )
    registry = Registry(settings)
    info = registry.get_version(version)
    scratch = Scratch.of(settings, registry, "compress", "compress-")
    name = f"v{info.version}"
    with registry.lock(f"compress-{name}"):
        try:
            summary = _compress(
                registry, settings, policy.compress, policy, info.version, scratch.path(name), progress
            )
        except Exception as exc:
            scratch.keep(name, exc)
            raise
        scratch.remove_held(name)  # every student is recorded on the version's run now
    scratch.prune()
    return summary


def compress_for_release(settings: Settings, version: str) -> dict[str, Any] | None:
    """The loop's compress: build the students when policy `compress.enabled` says so and the
    version records none yet (a resumed round does not distil twice); None when it does not run.

    Called between approval and conversion, so the conversion weighs what was built."""
    from tuneloop.steps.students import read_students_tag

    policy = load_policy(settings.policy_path)
    if policy.compress is None or not policy.compress.enabled:
        return None
    if read_students_tag(Registry(settings).get_version(version).tags):
        return {"version": version, "skipped": "students already recorded", "published": False}
    return compress_step(settings, version)


def load_version_rows(
    snapshots_dir: Path, manifest: dict[str, Any], tags: dict[str, str]
) -> dict[str, pd.DataFrame]:
    """The rows a version trained on and was judged on: {"train", "replay", "eval", "golden"}.

    `train` is the new rows of every snapshot the version trained on plus its replay sample
    (`replay` alone as well); `eval` their eval splits; `golden` the golden rows of every snapshot
    the round knew. A manifest from before `trained_snapshots` was recorded names no snapshots: the
    `data_snapshot` tag's then stands for them.
    """
    from tuneloop.train.replay import apply_replay_manifest

    trained = list(manifest.get("trained_snapshots") or [tags["data_snapshot"]])
    seen = list(manifest.get("history_snapshots") or [])

    def concat(ids: list[str], split: str) -> pd.DataFrame:
        frames = [snap.load_split(snapshots_dir, sid, split).assign(snapshot=sid) for sid in ids]
        return (
            pd.concat(frames, ignore_index=True)
            if frames
            else pd.DataFrame(columns=[*snap.COLUMNS, "snapshot"])
        )

    history = concat(seen, "train")
    replay = apply_replay_manifest(history, manifest) if manifest.get("rows") else history.iloc[:0]
    new = concat(trained, "train")
    return {
        "train": pd.concat([new, replay], ignore_index=True),
        "replay": replay,
        "eval": concat(trained, "eval"),
        "golden": concat([*seen, *trained], "golden"),
    }


def _compress(
    registry: Registry,
    settings: Settings,
    cp: CompressPolicy,
    policy: Policy,
    version: str,
    work: Path,
    progress: bool,
) -> dict[str, Any]:
    from tuneloop.compress import (
        DistillConfig,
        Predictions,
        StudentLimits,
        build_depth_student,
        choose_layers,
        count_parameters,
        distill,
        judge_student,
        load_teacher,
        macro_f1,
        predict_logits,
        prune_ffn,
        save_student,
        teacher_depth,
    )

    info = registry.get_version(version)  # read again under the lock
    if "data_snapshot" not in info.tags:
        raise RegistryError(
            f"v{info.version} lacks the data_snapshot tag: it was not registered by tuneloop train"
        )
    shutil.rmtree(work, ignore_errors=True)  # never distil from a stale or partial download
    # verify=True: every file against the version's checksums.json and merged_sha256 (downloads.py).
    teacher_dir = registry.download(info.version, "merged", work / "teacher", verify=True)
    manifest_file = registry.download(info.version, "replay_manifest.json", work / "manifest", verify=True)
    rows = load_version_rows(settings.snapshots_dir, json.loads(Path(manifest_file).read_text()), info.tags)

    teacher, tokenizer, labels = load_teacher(teacher_dir)
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(x) for frame in rows.values() for x in frame["label"]} - set(index))
    if unknown:
        raise ValueError(f"v{info.version}'s rows carry labels its model does not know: {unknown[:5]}")
    texts = rows["train"]["text"].astype(str).tolist()
    label_ids = [index[str(x)] for x in rows["train"]["label"]]
    sets = {
        name: (rows[name]["text"].astype(str).tolist(), rows[name]["label"].astype(str).tolist())
        for name in ("eval", "golden")
        if not rows[name].empty
    }

    def predict(model: Any, set_texts: list[str]) -> list[str]:
        logits = predict_logits(model, tokenizer, set_texts, max_length=settings.max_length)
        return [labels[i] for i in logits.argmax(axis=1)]

    started = time.perf_counter()
    # Once for every student: the teacher's logits on the training rows, and its answers on each set.
    soft = predict_logits(teacher, tokenizer, texts, max_length=settings.max_length)
    teacher_answers = {name: predict(teacher, set_texts) for name, (set_texts, _) in sets.items()}
    teacher_seconds = time.perf_counter() - started
    depth = teacher_depth(teacher)
    limits = StudentLimits(
        max_f1_drop_points=cp.max_f1_drop_points,
        min_agreement=cp.min_agreement,
        max_per_label_drop_points=policy.gates.max_per_label_drop_points,
        min_label_support=policy.gates.min_label_support,
    )
    cfg = DistillConfig(
        epochs=cp.epochs,
        learning_rate=cp.learning_rate,
        temperature=cp.temperature,
        alpha=cp.alpha,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        seed=settings.seed,
        hidden_weight=cp.hidden_state_weight,
    )
    teacher_params = count_parameters(teacher)
    students: list[dict[str, Any]] = []
    for student_depth in cp.depths:
        if student_depth >= depth:
            students.append(
                {"depth": student_depth, "skipped": f"the teacher has {depth} layers: nothing to drop"}
            )
            continue
        tick = time.perf_counter()
        layers = choose_layers(depth, student_depth)
        student = build_depth_student(teacher, layers)
        # Width: the FFN neurons the round's rows lean on least go before the student learns.
        ffn = prune_ffn(
            student,
            tokenizer,
            texts,
            soft,
            cp.ffn_keep,
            temperature=cp.temperature,
            max_length=settings.max_length,
            seed=settings.seed,
        )
        hidden = cp.hidden_state_weight > 0
        result = distill(
            student,
            tokenizer,
            texts,
            label_ids,
            soft,
            cfg,
            teacher=teacher if hidden else None,
            layers=layers,
            progress=progress,
        )
        answers = {name: predict(student, set_texts) for name, (set_texts, _) in sets.items()}
        verdict = judge_student(
            {
                name: Predictions(truth, teacher_answers[name], answers[name])
                for name, (_, truth) in sets.items()
            },
            limits,
        )
        folder = save_student(
            student, teacher_dir, work / "students" / f"depth-{student_depth}", layers, depth
        )
        params = count_parameters(student)
        students.append(
            {
                "depth": student_depth,
                "layers": layers,
                "ffn": ffn,
                "params": params,
                "params_over_teacher": round(params / teacher_params, 4),
                "bytes": (folder / WEIGHTS).stat().st_size,
                "macro_f1": {
                    name: {"teacher": fig["teacher_macro_f1"], "student": fig["student_macro_f1"]}
                    for name, fig in verdict.sets.items()
                },
                "agreement": {name: fig["agreement"] for name, fig in verdict.sets.items()},
                "passed": verdict.passed,
                "reasons": verdict.reasons,
                "verdict": verdict.to_dict(),
                "distill": result.to_dict(),
                "seconds": round(time.perf_counter() - tick, 3),
                "path": str(folder),
            }
        )
    # Files first, the version's `students` tag last (steps/students.py).
    recorded = record_students(registry, info.version, Path(teacher_dir), students, work / "publish")
    for student in students:
        student.pop("path", None)  # the scratch folder goes once recorded: read it back from the run
        if str(student["depth"]) in recorded:
            student["recorded"] = recorded[str(student["depth"])]
    return {
        "version": info.version,
        "data_snapshot": info.tags["data_snapshot"],
        "rows": {name: len(frame) for name, frame in rows.items()},
        "teacher": {
            "layers": depth,
            "params": teacher_params,
            "bytes": (Path(teacher_dir) / WEIGHTS).stat().st_size,
            "macro_f1": {
                name: round(macro_f1(truth, teacher_answers[name]), 6) for name, (_, truth) in sets.items()
            },
            "seconds": round(teacher_seconds, 3),
        },
        "limits": asdict(limits),
        "distill": asdict(cfg),
        "students": students,
        "passed": [s["depth"] for s in students if s.get("passed")],
        "published": False,
    }
