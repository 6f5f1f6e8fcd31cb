"""What the file-based datasets share: :class:`LoadedData`, where their files are looked for,
the verify-then-record step of every load, and the one-line messages that name the fix.

Each dataset module (:mod:`nfvi.data.frey`, :mod:`~nfvi.data.static_mnist`,
:mod:`~nfvi.data.omniglot`, :mod:`~nfvi.data.caltech`, :mod:`~nfvi.data.cifar_patches`) reads
its published file format, checks exact shapes and value sets, and raises
:class:`~nfvi.errors.DataError` naming the file and the fix when the file is not that layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from nfvi.data.store import check_recorded, record
from nfvi.errors import DataError

T = TypeVar("T")


@dataclass
class LoadedData:
    """A data set in memory, ready for training.

    Images are float32 ``[N, P]`` with values in [0, 1], ``P = prod(image_shape)``, each row an
    image flattened row-major (C, H, W); labels are int64 ``[N]`` where the files have them
    (not used for training; handy for plots and checks).
    """

    name: str  # a name of nfvi.data.DATASETS
    source: str  # resolved: "full" | "bundled"
    train: torch.Tensor  # float32 [N, P]
    val: torch.Tensor  # float32 [Nv, P]
    test: torch.Tensor  # float32 [Nt, P]
    image_shape: tuple[int, int, int]  # (C, H, W), e.g. (1, 28, 28)
    note: str  # "" or a warning the caller should print (e.g. the bundled fallback)
    location: str  # directory of the data files, or the bundled file's path
    train_labels: torch.Tensor | None = None  # int64 [N]
    val_labels: torch.Tensor | None = None  # int64 [Nv]
    test_labels: torch.Tensor | None = None  # int64 [Nt]


def find_file(data_dir: str | Path, name: str, file: str) -> Path | None:
    """``<data_dir>/<name>/<file>`` (where ``nfvi data import|fetch`` put it) or
    ``<data_dir>/<file>``; None when neither exists."""
    for p in (Path(data_dir) / name / file, Path(data_dir) / file):
        if p.is_file():
            return p
    return None


def get_it(name: str) -> str:
    """How to get a dataset's files, for the end of a message."""
    return f"nfvi data fetch {name} or nfvi data import {name} PATH"


def not_found(name: str, files: Iterable[str], data_dir: str | Path, url: str) -> DataError:
    """The error for missing files: which, where looked, how to get them."""
    d = Path(data_dir)
    return DataError(f"{name} file(s) {', '.join(files)} not found in {d / name} or {d}; run "
                     f"{get_it(name)} (source: {url})")


def replace_it(name: str, url: str) -> str:
    """The fix for a file that is not the published one."""
    return f"replace it with the original from {url} ({get_it(name)})"


def one_line(e: BaseException) -> str:
    """An exception as ``Type: message`` on one line."""
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def verified(path: Path, data_dir: str | Path, name: str, url: str,
             read: Callable[[Path], T]) -> T:
    """``read(path)`` (which checks the layout), after comparing the file's sha256 with the one
    recorded at its first verification; records it the first time."""
    digest = check_recorded(path, data_dir, replace_it(name, url))
    out = read(path)
    record(path, data_dir, digest)
    return out


def load_mat(path: Path, variables: Iterable[str], fix: str) -> dict[str, object]:
    """The named variables of a MATLAB v4/v5 file (:func:`scipy.io.loadmat`: nothing is
    unpickled); :class:`DataError` with ``fix`` when it cannot be read."""
    from scipy.io import loadmat

    try:
        return loadmat(str(path), variable_names=list(variables))
    except Exception as e:  # scipy raises ValueError, MatReadError, OSError... for bad files
        raise DataError(f"{path} is not a readable MATLAB file ({one_line(e)}); {fix}") from e


def describe(a: object) -> str:
    """``dtype [shape]`` of an array, or what else it is, for messages."""
    if isinstance(a, np.ndarray):
        return f"{a.dtype} {list(a.shape)}"
    return "nothing" if a is None else type(a).__name__


def column_major_images(rows: np.ndarray, side: int = 28) -> np.ndarray:
    """``[N, side*side]`` rows each holding one image column-major (MATLAB's ``image(:)``) ->
    the same images as ``[N, side*side]`` rows row-major."""
    n = rows.shape[0]
    # row n reshaped C-order is the transpose of image n
    return np.ascontiguousarray(rows.reshape(n, side, side).transpose(0, 2, 1)).reshape(n, -1)


def seeded_split(n: int, n_val: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a seeded random choice of ``n_val`` of ``n`` examples, each
    sorted (the split is a pure subset choice; the files' order is kept)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values
