"""Downloads and verification: a version's files come back only if they match what was recorded.

Every file is checked against the version's root checksums.json, that manifest against the
version's `checksums_sha256` tag, and the weight files also against their sha256 tags
(registry/verify.py judges; this module fetches, and deletes a download that fails).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from tuneloop.files import sha256_file
from tuneloop.registry.client import RegistryError, VersionInfo
from tuneloop.registry.retention import collected_problem, collected_record
from tuneloop.registry.verify import MANIFEST, MANIFEST_TAG, checksum_problems
from tuneloop.registry.versions import VersionStore


class Downloads(VersionStore):
    """Checksum-verified downloads of a version's artifacts."""

    def download(self, version: str, subpath: str = "", dst: Path | None = None, verify: bool = True) -> Path:
        """Download (part of) a version's artifacts and return the local folder (or file).

        With `verify` (the default), every file is checked against the version's checksums.json,
        that manifest against the `checksums_sha256` tag, and the weight files also against their
        sha256 tags; a mismatch, or a version with no such tag, deletes the download and raises
        RegistryError naming each file and both hashes.
        """
        import mlflow

        info = self.get_version(version)
        subpath = subpath.strip("/")
        if _collected_under(info, subpath):  # say so, instead of "missing from the download"
            raise RegistryError(str(collected_problem(info.version, info.tags)))
        source = info.source.rstrip("/")
        uri = source + (f"/{subpath}" if subpath else "")
        target = dst or Path(tempfile.mkdtemp(prefix=f"tuneloop-v{version}-"))
        target.mkdir(parents=True, exist_ok=True)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
        if not verify:
            return local
        try:
            problems = self._verify(info, source, subpath, local)
        except Exception:
            _remove(local, target if dst is None else None)
            raise
        if problems:
            _remove(local, target if dst is None else None)
            listing = "\n".join(f"  - {p}" for p in problems)
            raise RegistryError(
                f"v{info.version} ({uri}) does not match its recorded checksums; the download was "
                f"deleted. Do not use this version until its artifacts are restored (or, with no "
                f"{MANIFEST_TAG} tag, re-anchored):\n{listing}"
            )
        return local

    def _verify(self, info: VersionInfo, source: str, subpath: str, local: Path) -> list[str]:
        """Problems of the downloaded `local` (= `subpath` of the version) against its records."""
        import mlflow

        if local.is_file():
            actual = {subpath: sha256_file(local)}
        else:
            prefix = f"{subpath}/" if subpath else ""
            files = (p for p in local.rglob("*") if p.is_file())
            actual = {prefix + str(p.relative_to(local)): sha256_file(p) for p in files}
        # The root manifest is the only reference (a checksums.json deeper down is a file it lists).
        # Downloaded with the folder, that very copy is checked; otherwise it is fetched alone.
        if MANIFEST in actual:
            data = (local if local.is_file() else local / MANIFEST).read_bytes()
        else:
            listed = mlflow.artifacts.list_artifacts(artifact_uri=source)
            if not any(f.path.rsplit("/", 1)[-1] == MANIFEST for f in listed):
                raise RegistryError(
                    f"v{info.version} has no {MANIFEST} at the root of {source}, so its files cannot be "
                    "verified; it was not registered by `tuneloop train` (download(verify=False) skips "
                    "the check knowingly)."
                )
            with tempfile.TemporaryDirectory(prefix="tuneloop-sums-") as tmp:
                got = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/{MANIFEST}", dst_path=tmp)
                data = Path(got).read_bytes()
        recorded = json.loads(data)
        expected_under = None if local.is_file() else subpath
        return checksum_problems(
            actual, hashlib.sha256(data).hexdigest(), recorded, info.tags, expected_under
        )


def _collected_under(info: VersionInfo, subpath: str) -> bool:
    """Whether gc removed files under `subpath` of the version's source (a runs:/ URI)."""
    record = collected_record(info.tags)
    if record is None:
        return False
    prefix = f"runs:/{info.run_id}/"
    if record.get("truncated") or not info.source.startswith(prefix):
        return True
    wanted = "/".join(p for p in (info.source[len(prefix) :].strip("/"), subpath) if p)
    return any(not wanted or f == wanted or f.startswith(f"{wanted}/") for f in record.get("files", []))


def _remove(local: Path, made: Path | None) -> None:
    """Delete a rejected download, and the temporary folder made for it."""
    if local.is_dir():
        shutil.rmtree(local, ignore_errors=True)
    else:
        local.unlink(missing_ok=True)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
