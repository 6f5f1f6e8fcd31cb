"""Omniglot 28x28 (Lake et al. 2015's handwritten characters, downsampled), as used by the IWAE
paper (Burda et al. 2016) and Sylvester flows (van den Berg et al. 2018).

Format: ``chardata.mat``, a MATLAB v5 file read with :func:`scipy.io.loadmat` (nothing is
unpickled). Variables ``data`` ``[784, 24345]`` (training) and ``testdata`` ``[784, 8070]``
(test), floating point grey levels in [0, 1]; each column is one image stored column-major
(MATLAB's ``image(:)``), so column ``j`` reshaped in Fortran order to 28x28 is upright image
``j``. Other variables (labels) are not read. Both shapes and the value range are verified.

Split as Burda et al. / van den Berg et al.: 1,345 training images, chosen by a seeded shuffle
(``split_seed``), held out for validation: 23,000 train / 1,345 validation / 8,070 test
(val_size does not apply). Pixels stay grey levels: the config binarizes training batches
dynamically and val/test once with a fixed seed.

Source: https://github.com/yburda/iwae (``datasets/OMNIGLOT/chardata.mat``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nfvi.data.common import (
    LoadedData,
    column_major_images,
    describe,
    find_file,
    load_mat,
    not_found,
    replace_it,
    seeded_split,
    verified,
)
from nfvi.errors import DataError

NAME = "omniglot"
FILE = "chardata.mat"
URL = "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/chardata.mat"
HOME = "https://github.com/yburda/iwae/tree/master/datasets/OMNIGLOT"
SHAPES = {"data": (784, 24345), "testdata": (784, 8070)}  # as published
N_VAL = 1345
IMAGE_SHAPE = (1, 28, 28)


def find(data_dir: str | Path) -> Path | None:
    return find_file(data_dir, NAME, FILE)


def split_sizes(n_train: int) -> tuple[int, int]:
    """(train, validation) sizes made of ``n_train`` training images: N_VAL held out."""
    if not 0 < N_VAL < n_train:
        raise DataError(f"{NAME} has {n_train} training images, too few to hold out {N_VAL}")
    return n_train - N_VAL, N_VAL


def read_chardata(path: str | Path) -> dict[str, np.ndarray]:
    """``{"train", "test"}``: float32 ``[N, 784]`` row-major images in [0, 1];
    :class:`DataError` naming the file and the fix unless it is the published layout."""
    fix = replace_it(NAME, URL)
    mat = load_mat(Path(path), SHAPES, fix)
    out = {}
    for var, shape in SHAPES.items():
        a = mat.get(var)
        if (not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating)
                or a.shape != shape):
            raise DataError(f"{path} holds {var}: {describe(a)}, not the published float "
                            f"{list(shape)}; {fix}")
        if not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise DataError(f"{path}: {var} has values outside [0, 1]; {fix}")
        out["train" if var == "data" else "test"] = column_major_images(
            np.ascontiguousarray(a.T, dtype=np.float32))
    return out


def load(data_dir: str, split_seed: int = 0) -> LoadedData:
    """``chardata.mat`` from ``data_dir``, verified (layout; sha256 as recorded at its first
    use), split 23,000 / 1,345 / 8,070 with ``split_seed``."""
    path = find(data_dir)
    if path is None:
        raise not_found(NAME, [FILE], data_dir, URL)
    images = verified(path, data_dir, NAME, URL, read_chardata)
    train = torch.from_numpy(images["train"])
    split_sizes(len(train))  # enough images for the published hold-out
    train_idx, val_idx = seeded_split(len(train), N_VAL, split_seed)
    return LoadedData(name=NAME, source="full", train=train[train_idx], val=train[val_idx],
                      test=torch.from_numpy(images["test"]), image_shape=IMAGE_SHAPE,
                      note="", location=str(path.parent))
