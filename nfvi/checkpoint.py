"""Checkpoints: written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds only state dicts, plain Python containers, tensors and RNG states, so that
loading one never runs code. The training loop (:mod:`nfvi.training`) decides what goes in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nfvi.errors import CheckpointError
from nfvi.rundir import atomic_write


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` the payload atomically (see :func:`nfvi.rundir.atomic_write`)."""
    import torch

    atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; one-line :class:`CheckpointError` if bad."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass checkpoint=<run dir>/checkpoints/best.pt "
            "(or a run directory)"
        )
    with path.open("rb") as f:
        head = f.read(4)
    if head[:4] != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(
            f"{path} is not a checkpoint file (not a PyTorch archive); pass a run directory or "
            "a file from <run dir>/checkpoints/ (last.pt or best.pt)"
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or unsafe file
        raise CheckpointError(
            f"checkpoint {path} is damaged or holds objects nfvi never saves (truncated, "
            "corrupt, or not written by nfvi); use the run's other checkpoint (last.pt or "
            "best.pt) or retrain"
        ) from e
    if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
        raise CheckpointError(
            f"{path} is not an nfvi checkpoint (no model state or config); "
            "pass a file from <run dir>/checkpoints/"
        )
    return obj
