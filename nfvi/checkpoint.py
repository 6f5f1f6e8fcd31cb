"""Atomic writes and checkpoints.

A checkpoint holds only state dicts, plain Python containers, tensors and RNG states, so that
it loads with ``torch.load(weights_only=True)``. Every file is written to a temporary file in
the same directory, flushed and fsync'ed, then renamed over the target: a crash leaves either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from nfvi.errors import CheckpointError


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` the payload atomically."""
    import torch

    _atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; one-line :class:`CheckpointError` if bad."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass checkpoint=<run dir>/checkpoints/best.pt "
            "(or a run directory)"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not an nfvi checkpoint ({first[:120]}); "
            "use another checkpoint of the run (last.pt or best.pt) or retrain"
        ) from e
    if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
        raise CheckpointError(
            f"{path} is not an nfvi checkpoint (no model state or config); "
            "pass a file from <run dir>/checkpoints/"
        )
    return obj
