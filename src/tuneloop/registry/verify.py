"""Which downloaded files do not match what was recorded at registration (a pure check).

Two records exist for a version: `checksums.json` at the root of its source folder (every file at
registration, keyed by path relative to that folder; a later stage may add its own `checksums.json`
in a subfolder, keyed relative to that subfolder), and sha256 tags on the version for the weight
files. The tags are kept apart from the artifacts, so a tampered weight file with a matching
tampered `checksums.json` is still caught.
"""

from __future__ import annotations

from collections.abc import Mapping

MANIFEST = "checksums.json"

# Version tags holding the sha256 of one file, keyed by the file's path in the version's folder.
# (Converted models live outside that folder, under conversions/<key>/, checked by the stage that
# reads them against onnx_sha256 / int8_sha256.)
FILE_TAGS = {
    "adapter/adapter_model.safetensors": "adapter_sha256",
    "merged/model.safetensors": "merged_sha256",
}


def flatten_manifests(manifests: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """{folder: {path in folder: sha}} -> {path in the version: sha}; deeper manifests win."""
    flat: dict[str, str] = {}
    for folder in sorted(manifests, key=lambda f: f.count("/") + bool(f)):
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        flat.update({prefix + path: sha for path, sha in manifests[folder].items()})
    return flat


def checksum_problems(
    actual: Mapping[str, str],
    recorded: Mapping[str, str],
    tags: Mapping[str, str],
    expected_under: str | None,
) -> list[str]:
    """Problems with downloaded files `actual` ({path in the version: sha256}); empty means verified.

    `expected_under`: the folder that was downloaded whole ("" for all of it), so every recorded
    file under it must be there; None when a single file was downloaded.
    """
    problems = []
    for path, sha in sorted(actual.items()):
        if path.rsplit("/", 1)[-1] == MANIFEST:
            continue  # the manifests are the reference, checked by the tags below
        want = recorded.get(path)
        if want is None:
            problems.append(f"{path}: no recorded checksum (not in any {MANIFEST} of the version)")
        elif want != sha:
            problems.append(f"{path}: sha256 {sha} but {MANIFEST} records {want}")
        tag = FILE_TAGS.get(path)
        if tag and tags.get(tag) and tags[tag] != sha:
            problems.append(f"{path}: sha256 {sha} but the version tag {tag} records {tags[tag]}")
    if expected_under is not None:
        prefix = f"{expected_under.strip('/')}/" if expected_under.strip("/") else ""
        missing = sorted(p for p in recorded if p.startswith(prefix) and p not in actual)
        problems += [f"{path}: recorded in {MANIFEST} but missing from the download" for path in missing]
    return problems
