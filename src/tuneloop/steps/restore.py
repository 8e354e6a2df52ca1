"""Step: `tuneloop restore N`, a version gc collected made whole again, verified against its record.

    adapter (kept, verified) + base model ─> merge ─> every merged file vs checksums.json ─┐
        (not equal: refused, naming the file and both sha256; nothing is uploaded)         │
    upload model/merged/ <──────────────────────────────────────────────────────────────────┘
      └─> convert again (the version's conversion, if it had one; its files were collected)
            └─> the ONNX graphs' sha256 vs the ones the version recorded before gc
                  └─> gc_collected tag removed, gc_restored recorded (when, by whom, what matched)

gc keeps what cannot be rebuilt (the adapter and its head, labels, checksums.json, reports) and
collects what can: the merged model is the base model with the LoRA folded in, a deterministic
computation whose result checksums.json recorded at registration; so a restore is checked file by
file against that record before anything goes back into the registry. The ONNX graphs are rebuilt
by the converter from the restored merged model; where the converter's output is bit-for-bit what
it was, the version's tags are unchanged, and where it is not (another CPU's INT8 calibration),
the new conversion is recorded and judged for parity as any conversion is, and the result says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tuneloop.config import Settings
from tuneloop.files import sha256_file
from tuneloop.registry.retention import GC_TAG, collected_record
from tuneloop.registry.store import Registry, RegistryError, current_user, now_iso

RESTORED_TAG = "gc_restored"
# The graphs gc collects and the converter rebuilds, by the tag that records each one's sha256.
GRAPH_TAGS = ("onnx_opt_sha256", "int8_sha256", "onnx_sha256")


class RestoreError(RegistryError):
    """The rebuilt files are not the recorded ones: nothing was uploaded, the version stays collected."""


def restore_step(settings: Settings, version: str, by: str | None = None) -> dict[str, Any]:
    """Rebuild a collected version's merged model and conversion, verified; a whole version is left
    as it is. Returns what was rebuilt and whether each file matched its record."""
    registry = Registry(settings)
    info = registry.get_version(version)
    record = collected_record(info.tags)
    if record is None:
        return {
            "version": info.version,
            "restored": False,
            "message": f"v{info.version} is whole: nothing to do",
        }
    if info.run_id is None:
        raise RegistryError(f"v{info.version} has no run: its files cannot be put back")
    work = settings.work_dir / "restore" / f"v{info.version}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        merged = _rebuild_merged(registry, info.version, work)
        registry.client.log_artifacts(info.run_id, str(merged), "model/merged")
        # The record now names only what is still missing (the graphs), so the verified download of
        # model/merged/ that the conversion makes is allowed, while the conversion is still redone.
        registry.set_tags(info.version, {GC_TAG: json.dumps(_without_merged(record))})
        graphs_before = {tag: info.tags[tag] for tag in GRAPH_TAGS if info.tags.get(tag)}
        conversion = None
        if info.tags.get("conversion_path"):
            from tuneloop.steps.convert import convert_step

            # The gc_collected tag is still on: convert_step does not reuse a collected conversion.
            # The INT8 candidate the version published is the one rebuilt (the summary, kept by gc,
            # names it): the converter would otherwise time every candidate again and might pick
            # another on a noisy host.
            chosen = _recorded_choice(registry, info.run_id, info.tags["conversion_path"])
            # And the model: a version that served a student rebuilds that student's graphs.
            conversion = convert_step(
                settings, info.version, int8_candidates=chosen, serves=info.tags.get("serves")
            )
        after = registry.get_version(info.version).tags
        graphs = {
            tag: {"before": sha, "after": after.get(tag), "same": after.get(tag) == sha}
            for tag, sha in graphs_before.items()
        }
        # The same graphs: what served before gc serves again. The converter re-times INT8 against
        # fp32 on this host, and a noisy timing must not flip a restored version's backend.
        same = all(g["same"] for g in graphs.values())
        if same and info.tags.get("int8_serve") and after.get("int8_serve") != info.tags["int8_serve"]:
            registry.set_tags(info.version, {"int8_serve": info.tags["int8_serve"]})
        restored = {
            "at": now_iso(),
            "by": by or current_user(),
            "collected": {k: record.get(k) for k in ("at", "by", "bytes")},
            "merged": "verified against checksums.json",
            "graphs_bit_for_bit": same,
        }
        registry.set_tags(info.version, {RESTORED_TAG: json.dumps(restored)})
        registry.client.delete_model_version_tag(settings.model_name, info.version, GC_TAG)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    notes = ["merged model verified file by file"]
    if conversion is not None:
        notes.append(f"conversion {'passed' if conversion['parity']['passed'] else 'failed'}")
    if not restored["graphs_bit_for_bit"]:
        notes.append("the rebuilt graphs differ from the recorded ones (their tags are the new ones)")
    return {
        "version": info.version,
        "restored": True,
        "graphs": graphs,
        "conversion": None if conversion is None else conversion["parity"]["passed"],
        "message": f"v{info.version} restored: " + "; ".join(notes),
    }


def _recorded_choice(registry: Registry, run_id: str, path: str) -> tuple[str, ...] | None:
    """The INT8 candidate the recorded conversion published, from its summary (None: not recorded)."""
    import tempfile

    from tuneloop.steps.convert import SUMMARY

    with tempfile.TemporaryDirectory(prefix="tuneloop-restore-") as tmp:
        local = registry.client.download_artifacts(run_id, f"{path}/{SUMMARY}", tmp)
        summary = json.loads(Path(local).read_text())
    chosen = (summary.get("int8_choice") or {}).get("chosen")
    return (chosen,) if chosen else None


def _without_merged(record: dict[str, Any]) -> dict[str, Any]:
    """The gc record with model/merged/ restored: a cut-short file list becomes "conversions"."""
    if record.get("truncated"):
        return {**record, "files": ["conversions"], "truncated": False}
    return {**record, "files": [f for f in record.get("files", []) if not f.startswith("model/merged/")]}


def _rebuild_merged(registry: Registry, version: str, work: Path) -> Path:
    """The merged model folded again from the kept adapter, every file checked against the
    version's checksums.json (itself checked against its tag by the verified download)."""
    from tuneloop.registry.verify import MANIFEST
    from tuneloop.train.predict import merge_adapter

    adapter = registry.download(version, "adapter", work / "adapter", verify=True)
    manifest_file = registry.download(version, MANIFEST, work / "manifest", verify=True)
    recorded: dict[str, str] = json.loads(Path(manifest_file).read_text())
    merged = merge_adapter(adapter, work / "merged")
    expected = {
        name.removeprefix("merged/"): sha for name, sha in recorded.items() if name.startswith("merged/")
    }
    built = {p.name: sha256_file(p) for p in merged.iterdir() if p.is_file()}
    problems = [
        f"merged/{name}: rebuilt sha256 {built.get(name, 'missing')}, recorded {sha}"
        for name, sha in sorted(expected.items())
        if built.get(name) != sha
    ]
    problems += [f"merged/{name}: rebuilt but not recorded" for name in sorted(set(built) - set(expected))]
    if problems:
        raise RestoreError(
            f"v{version} cannot be restored on this host: the merged model folded from its adapter is not "
            "the one registered (another torch or CPU may round differently); nothing was uploaded and "
            "the version stays collected:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    return merged
