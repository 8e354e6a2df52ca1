"""A version's students, recorded on its run and read back verified (issue 25).

A student is part of its version (same number, same lineage), so it is stored as artifacts of the
version's run, beside `model/` and `conversions/`:

    runs:/<run>/students/<n>L/   model.safetensors, config.json, labels.json, student.json,
                                 judgement.json (figures, passed, reasons), any tokenizer file
                                 that differs from model/merged/'s, and checksums.json

The tokenizer files a depth student shares with its teacher are not stored twice: checksums.json
lists them under `from_merged` with their sha256, and a reader takes them from the version's
model/merged/ (itself verified against the version's root checksums). Nor are the weight tensors it
shares byte for byte (the frozen word embeddings, distillation.py): the stored model.safetensors
holds the others, checksums.json lists the shared ones under `from_merged_tensors` with the sha256
of their bytes, and `download_student` puts them back from merged/model.safetensors, each checked.
The version tag `students` holds, per depth, where the folder is and the sha256 of its
checksums.json, so the tag anchors every byte. Files are written first and the tag last: a crash
leaves no tag naming missing files, and a re-run logs to a fresh folder (`students/3L.2`) rather
than into one a tag may already name. Refused students are recorded too, with why; nothing here
serves one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.files import sha256_file
from tuneloop.registry.runs import free_path
from tuneloop.registry.store import Registry, RegistryError

STUDENTS = "students"  # runs:/<run>/students/<n>L/
TAG = "students"
SUMS = "checksums.json"
JUDGEMENT = "judgement.json"
# Stored for every student whatever the teacher holds: what makes it this student, and its labels
# (a few hundred bytes) so the folder names what it answers without the teacher's.
OWN_FILES = ("model.safetensors", "config.json", "labels.json", "student.json")
WEIGHTS = "model.safetensors"


def record_students(
    registry: Registry, version: str, teacher_dir: Path, students: list[dict[str, Any]], staging: Path
) -> dict[str, dict[str, Any]]:
    """Log every built student (passed or refused) under the version's run, then update its tag.

    `students` are compress_step's entries; each with a `path` is recorded. Returns the tag's new
    entries by depth. Entries of depths not built this time stay in the tag as they were.
    """
    info = registry.get_version(version)
    if info.run_id is None:
        raise RegistryError(f"v{info.version} has no run to record its students on")
    built = [s for s in students if s.get("path")]
    if not built:
        return {}
    entries: dict[str, dict[str, Any]] = {}
    for student in built:
        folder = staging / f"{student['depth']}L"
        sums = _stage(Path(student["path"]), Path(teacher_dir), folder, student)
        path = free_path(registry, info.run_id, f"{STUDENTS}/{student['depth']}L")
        registry.client.log_artifacts(info.run_id, str(folder), path)
        entries[str(student["depth"])] = _entry(student, path, sums)
    shutil.rmtree(staging, ignore_errors=True)
    tag = {**read_students_tag(info.tags), **entries}
    registry.set_tags(info.version, {TAG: json.dumps(tag, sort_keys=True, separators=(",", ":"))})
    return entries


def read_students_tag(tags: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The `students` tag as data: {depth: {path, layers, passed, macro_f1_drop, agreement, sha256}}."""
    raw = tags.get(TAG)
    return dict(json.loads(raw)) if raw else {}


def download_student(settings: Settings, version: str, depth: int, dst: Path | None = None) -> Path:
    """Download the `depth`-layer student of `version` into a loadable folder, every byte verified.

    checksums.json against the sha256 in the version's `students` tag, each stored file against
    checksums.json (none missing, none extra), and the tokenizer files taken from model/merged/
    against both the version's own checksums and the student's record. A mismatch deletes the
    download and raises RegistryError naming the file.
    """
    import mlflow

    registry = Registry(settings)
    info = registry.get_version(version)
    entry = read_students_tag(info.tags).get(str(depth))
    if entry is None or info.run_id is None:
        raise RegistryError(f"v{info.version} has no recorded {depth}-layer student (tag `{TAG}`)")
    target = Path(dst) if dst else Path(tempfile.mkdtemp(prefix=f"tuneloop-v{info.version}-{depth}L-"))
    target.mkdir(parents=True, exist_ok=True)
    folder = target / f"{depth}L"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with tempfile.TemporaryDirectory(prefix="tuneloop-student-", dir=target) as tmp:
            got = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"runs:/{info.run_id}/{entry['path']}", dst_path=tmp
                )
            )
            got.rename(folder)
        problems = _check_folder(folder, entry["sha256"])
        if not problems:
            recorded = json.loads((folder / SUMS).read_bytes())
            for name, sha in recorded.get("from_merged", {}).items():
                # Verified by the registry against the version's root checksums; then against ours.
                local = registry.download(info.version, f"merged/{name}", folder / ".merged", verify=True)
                if sha256_file(local) != sha:
                    problems.append(f"merged/{name}: sha256 {sha256_file(local)}, the student recorded {sha}")
                local.rename(folder / name)
            if recorded.get("from_merged_tensors") and not problems:
                local = registry.download(info.version, f"merged/{WEIGHTS}", folder / ".merged", verify=True)
                problems += _join_weights(folder / WEIGHTS, local, recorded["from_merged_tensors"])
            shutil.rmtree(folder / ".merged", ignore_errors=True)
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if problems:
        shutil.rmtree(folder, ignore_errors=True)
        listing = "\n".join(f"  - {p}" for p in problems)
        raise RegistryError(
            f"v{info.version}'s {depth}-layer student ({entry['path']}) does not match its recorded "
            f"checksums; the download was deleted:\n{listing}"
        )
    return folder


def _stage(student_dir: Path, teacher_dir: Path, out: Path, student: dict[str, Any]) -> dict[str, Any]:
    """Copy the files to store into `out`, write judgement.json and checksums.json; return the sums."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shared: dict[str, str] = {}
    tensors: dict[str, str] = {}
    for path in sorted(p for p in student_dir.iterdir() if p.is_file()):
        sha = sha256_file(path)
        twin = teacher_dir / path.name
        if path.name == WEIGHTS and twin.is_file():
            tensors = _split_weights(path, twin, out / path.name)
        elif path.name not in OWN_FILES and twin.is_file() and sha256_file(twin) == sha:
            shared[path.name] = sha  # the teacher's tokenizer file, byte for byte: read from merged/
        else:
            shutil.copy2(path, out / path.name)
    judgement = {
        key: student[key]
        for key in ("depth", "layers", "passed", "reasons", "macro_f1", "agreement", "params", "bytes")
    }
    judgement["ffn"] = student.get("ffn")  # {"before", "after"}: feed-forward neurons per layer
    judgement["verdict"] = student["verdict"]
    judgement["distill"] = student["distill"]
    (out / JUDGEMENT).write_text(json.dumps(judgement, indent=2, sort_keys=True) + "\n")
    files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
    sums = {"files": files, "from_merged": shared, "from_merged_tensors": tensors}
    (out / SUMS).write_text(json.dumps(sums, indent=2, sort_keys=True) + "\n")
    return {"sha256": sha256_file(out / SUMS), **sums}


def _entry(student: dict[str, Any], path: str, sums: dict[str, Any]) -> dict[str, Any]:
    """The tag's compact line for one student: its worst figures over the judged sets."""
    sets = student["verdict"]["sets"].values()
    drops = [s["macro_f1_drop_points"] for s in sets if s.get("macro_f1_drop_points") is not None]
    agreements = [s["agreement"] for s in sets if s.get("agreement") is not None]
    return {
        "path": path,
        "layers": student["layers"],
        **({"ffn": student["ffn"]["after"]} if student.get("ffn") else {}),
        "passed": bool(student["passed"]),
        "macro_f1_drop": round(max(drops), 4) if drops else None,
        "agreement": round(min(agreements), 4) if agreements else None,
        "sha256": sums["sha256"],
    }


def _check_folder(folder: Path, sums_sha256: str) -> list[str]:
    """Problems of a downloaded student folder against its checksums.json and the tag's sha256."""
    sums_file = folder / SUMS
    if not sums_file.is_file():
        return [f"{SUMS}: missing"]
    data = sums_file.read_bytes()
    actual_sums = hashlib.sha256(data).hexdigest()
    if actual_sums != sums_sha256:
        return [f"{SUMS}: sha256 {actual_sums}, the tag recorded {sums_sha256}"]
    recorded: dict[str, str] = json.loads(data)["files"]
    actual = {str(p.relative_to(folder)): sha256_file(p) for p in folder.rglob("*") if p.is_file()}
    actual.pop(SUMS)
    problems = [f"{name}: missing" for name in sorted(set(recorded) - set(actual))]
    problems += [f"{name}: not recorded" for name in sorted(set(actual) - set(recorded))]
    problems += [
        f"{name}: sha256 {actual[name]}, recorded {sha}"
        for name, sha in sorted(recorded.items())
        if name in actual and actual[name] != sha
    ]
    return problems


def _tensor_sha(tensor: Any) -> str:
    """sha256 of a tensor's raw bytes (any dtype: viewed as bytes, not converted)."""
    import torch

    return hashlib.sha256(tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def _split_weights(student: Path, teacher: Path, out: Path) -> dict[str, str]:
    """Write to `out` the student's tensors that differ from the teacher's; {name: sha256} of the rest."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    own = load_file(str(student))
    with safe_open(str(teacher), framework="pt") as theirs:
        names = set(theirs.keys())
        shared = {
            name: _tensor_sha(tensor)
            for name, tensor in own.items()
            if name in names and torch.equal(theirs.get_tensor(name), tensor)
        }
    save_file({n: t for n, t in own.items() if n not in shared}, str(out), metadata={"format": "pt"})
    return shared


def _join_weights(partial: Path, teacher: Path, shared: dict[str, str]) -> list[str]:
    """Put the shared tensors back into `partial` from the teacher's file; problems when one differs."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(partial))
    problems = []
    with safe_open(str(teacher), framework="pt") as theirs:
        names = set(theirs.keys())
        for name, sha in sorted(shared.items()):
            tensor = theirs.get_tensor(name) if name in names else None
            if tensor is None or _tensor_sha(tensor) != sha:
                problems.append(f"merged/{WEIGHTS} tensor {name}: not the one the student recorded ({sha})")
            else:
                tensors[name] = tensor
    if not problems:
        save_file(tensors, str(partial), metadata={"format": "pt"})
    return problems
