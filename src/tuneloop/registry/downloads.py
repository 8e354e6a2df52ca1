"""Downloads and verification: a version's files come back only if they match what was recorded.

Every file is checked against the version's checksums.json manifests and the weight files also
against their sha256 tags (registry/verify.py judges; this module fetches and deletes a mismatch).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tuneloop.files import sha256_file
from tuneloop.registry.client import RegistryError, VersionInfo
from tuneloop.registry.verify import MANIFEST, checksum_problems, flatten_manifests
from tuneloop.registry.versions import VersionStore


class Downloads(VersionStore):
    """Checksum-verified downloads of a version's artifacts."""

    def download(self, version: str, subpath: str = "", dst: Path | None = None, verify: bool = True) -> Path:
        """Download (part of) a version's artifacts and return the local folder (or file).

        With `verify` (the default), every file is checked against the version's checksums.json
        and the weight files also against their sha256 tags; a mismatch deletes the download and
        raises RegistryError naming the file and both hashes.
        """
        import mlflow

        info = self.get_version(version)
        subpath = subpath.strip("/")
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
                f"deleted. Do not use this version until its artifacts are restored:\n{listing}"
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
        # The manifests that may cover these files: the root one, and one in each folder on the way
        # down to `subpath` (a later stage adds e.g. onnx/checksums.json for what it logged).
        parts = subpath.split("/")[:-1] if local.is_file() else [p for p in subpath.split("/") if p]
        folders = ["/".join(parts[:i]) for i in range(len(parts) + 1)]
        folders += sorted({p.rsplit("/", 1)[0] if "/" in p else "" for p in actual if p.endswith(MANIFEST)})
        manifests: dict[str, dict[str, str]] = {}
        with tempfile.TemporaryDirectory(prefix="tuneloop-sums-") as tmp:
            for folder in dict.fromkeys(folders):
                listed = mlflow.artifacts.list_artifacts(artifact_uri=f"{source}/{folder}".rstrip("/"))
                if not any(f.path.rsplit("/", 1)[-1] == MANIFEST for f in listed):
                    continue
                name = f"{folder}/{MANIFEST}" if folder else MANIFEST
                got = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/{name}", dst_path=tmp)
                manifests[folder] = json.loads(Path(got).read_text())
        if "" not in manifests:
            raise RegistryError(
                f"v{info.version} has no {MANIFEST} at the root of {source}, so its files cannot be "
                "verified; it was not registered by `tuneloop train` (download(verify=False) skips "
                "the check knowingly)."
            )
        expected_under = None if local.is_file() else subpath
        return checksum_problems(actual, flatten_manifests(manifests), info.tags, expected_under)


def _remove(local: Path, made: Path | None) -> None:
    """Delete a rejected download, and the temporary folder made for it."""
    if local.is_dir():
        shutil.rmtree(local, ignore_errors=True)
    else:
        local.unlink(missing_ok=True)
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
