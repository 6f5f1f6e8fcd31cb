"""The data dir's record of verified files: ``<data_dir>/checksums.json``.

A file that passed its loader's checks (exact shapes and value sets) has its sha256 recorded
on that first use; every later load recomputes it, and a file that changed since is an error
naming it (a truncated re-download, an edited copy), never silently different data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from nfvi.errors import DataError
from nfvi.rundir import atomic_write_json

RECORD = "checksums.json"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _record_file(data_dir: Path) -> Path:
    return data_dir / RECORD


def _read(data_dir: Path) -> dict[str, str]:
    p = _record_file(data_dir)
    if not p.is_file():
        return {}
    try:
        out = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{p} is unreadable ({e}); delete it to re-verify the data files") from e
    if not isinstance(out, dict):
        raise DataError(f"{p} is not a checksum record; delete it to re-verify the data files")
    return out


def check_recorded(path: Path, data_dir: str | Path, fix: str) -> str:
    """Compare ``path``'s sha256 with the record; returns the digest. Raises
    :class:`DataError` when it changed (``fix`` says how to get the original back)."""
    data_dir = Path(data_dir)
    digest = sha256(path)
    key = os.path.relpath(path.resolve(), data_dir.resolve())
    known = _read(data_dir).get(key)
    if known is not None and known != digest:
        raise DataError(f"{path} changed since it was verified (sha256 {digest[:12]}..., "
                        f"recorded {known[:12]}... in {data_dir / RECORD}); {fix}")
    return digest


def record(path: Path, data_dir: str | Path, digest: str) -> None:
    """Add ``path``'s verified digest to the record (skipped where the dir is read-only)."""
    data_dir = Path(data_dir)
    key = os.path.relpath(path.resolve(), data_dir.resolve())
    entries = _read(data_dir)
    if entries.get(key) == digest:
        return
    entries[key] = digest
    try:
        atomic_write_json(_record_file(data_dir), dict(sorted(entries.items())))
    except OSError:
        pass  # a read-only data dir (a system package): the loader's checks still ran
