"""Helpers shared by every saved artefact (maps, indexes, models, vocabularies)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in blocks: the checksum manifests record to refuse corrupt artefacts."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def read_checked_manifest(directory: str | Path, manifest_name: str, payload_name: str, artefact_format: str,
                          what: str, error: type[Exception]) -> dict:
    """The JSON manifest of an artefact folder, after the checks every format needs: both files present, the
    manifest JSON, its ``format`` the expected one, and the payload matching the manifest's ``<stem>_sha256``.
    Raises ``error`` naming ``what`` (e.g. ``"policy"``) on the first failure."""
    directory = Path(directory)
    manifest_path, payload_path = directory / manifest_name, directory / payload_name
    if not manifest_path.is_file() or not payload_path.is_file():
        raise error(f"not a spikebot {what} (needs {manifest_name} and {payload_name}): {directory}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"corrupt {what} manifest {manifest_path}: not JSON ({problem})") from problem
    if not isinstance(manifest, dict) or manifest.get("format") != artefact_format:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise error(f"{directory} is a {what} of format {found!r}; this spikebot reads {artefact_format!r}")
    if file_sha256(payload_path) != manifest.get(f"{Path(payload_name).stem}_sha256"):
        raise error(f"corrupt {what}: {payload_path} does not match the checksum in {manifest_path}")
    return manifest
