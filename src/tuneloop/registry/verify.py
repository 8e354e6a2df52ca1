"""Which downloaded files do not match what was recorded at registration (a pure check).

A version's records form one chain, anchored outside its artifacts:

    version tag checksums_sha256 ─> checksums.json (root of the version's folder) ─> every file
    version tags adapter_sha256, merged_sha256 ─> the weight files (a second, direct anchor)

The tags live in the registry, apart from the artifact store, so whoever can rewrite the artifacts
cannot also rewrite what vouches for them: swapping two labels in `merged/config.json` and
re-hashing `checksums.json` breaks the manifest's tag. Only the root manifest is a reference; a
`checksums.json` anywhere else in the folder is an ordinary file the root one must list, so a
manifest dropped into a subfolder after registration covers nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

MANIFEST = "checksums.json"
# The version tag holding the sha256 of the root manifest, set at registration (steps/round.py).
MANIFEST_TAG = "checksums_sha256"

# Version tags holding the sha256 of one file, keyed by the file's path in the version's folder.
# (Converted models live outside that folder, under conversions/<key>/, checked by the stage that
# reads them against onnx_sha256 / int8_sha256.)
FILE_TAGS = {
    "adapter/adapter_model.safetensors": "adapter_sha256",
    "merged/model.safetensors": "merged_sha256",
}
# Where an operator reads how to re-anchor a version registered before MANIFEST_TAG existed.
REANCHOR_HELP = 'registry/README.md, "Versions registered before checksums_sha256"'


def manifest_problems(manifest_sha256: str | None, tags: Mapping[str, str]) -> list[str]:
    """Problems with the root manifest itself (sha256 of its bytes, None if absent); empty: anchored."""
    anchor = tags.get(MANIFEST_TAG)
    if not anchor:
        return [
            f"{MANIFEST}: the version has no {MANIFEST_TAG} tag, so nothing outside its artifacts vouches "
            f"for its manifest and no file of it can be trusted (a version registered before that tag "
            f"existed: see {REANCHOR_HELP})"
        ]
    if manifest_sha256 is None:
        return [f"{MANIFEST}: missing, so no file of the folder can be verified"]
    if manifest_sha256 != anchor.lower():
        return [f"{MANIFEST}: sha256 {manifest_sha256} but the version tag {MANIFEST_TAG} records {anchor}"]
    return []


def checksum_problems(
    actual: Mapping[str, str],
    manifest_sha256: str | None,
    recorded: Mapping[str, str],
    tags: Mapping[str, str],
    expected_under: str | None,
) -> list[str]:
    """Problems with downloaded files `actual` ({path in the version: sha256}); empty means verified.

    `manifest_sha256` is the sha256 of the root manifest's bytes and `recorded` its content (read
    from those same bytes). `expected_under`: the folder that was downloaded whole ("" for all of
    it), so every recorded file under it must be there; None when a single file was downloaded.
    """
    problems = manifest_problems(manifest_sha256, tags)
    for path, sha in sorted(actual.items()):
        if path == MANIFEST:
            if sha != manifest_sha256:  # the copy downloaded with the folder, not the one checked
                problems.append(f"{path}: sha256 {sha} differs from the manifest that was checked")
            continue
        want = recorded.get(path)
        if want is None:
            problems.append(f"{path}: no recorded checksum (not in the version's {MANIFEST})")
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
