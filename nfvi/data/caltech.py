"""Caltech 101 Silhouettes 28x28 (Marlin et al. 2010): binary object silhouettes of Caltech 101.

Format: ``caltech101_silhouettes_28_split1.mat``, a MATLAB v5 file read with
:func:`scipy.io.loadmat` (nothing is unpickled). Variables ``train_data``, ``val_data`` and
``test_data``, each ``[N, 784]``, one image per row stored column-major (row reshaped in
Fortran order to 28x28 is the upright image), values exactly 0 or 1 with the silhouette 0 on a
background of 1; as van den Berg et al. 2018 the loader returns ``1 - x`` (silhouette = 1).
Shapes and the value set are verified; labels are not read.

Split as published (split 1): 4,100 train / 2,264 validation / 2,307 test (split_seed and
val_size do not apply). The pixels are already binary: the config thresholds at 0.5, the
identity on {0, 1}.

Source: Benjamin Marlin's page https://people.cs.umass.edu/~marlin/data.shtml, file
https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat.
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
    verified,
)
from nfvi.errors import DataError

NAME = "caltech_silhouettes"
FILE = "caltech101_silhouettes_28_split1.mat"
URL = "https://people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat"
HOME = "https://people.cs.umass.edu/~marlin/data.shtml"
VARIABLES = {"train": "train_data", "val": "val_data", "test": "test_data"}
COUNTS = {"train": 4100, "val": 2264, "test": 2307}  # images per split, as published
PIXELS = 784
IMAGE_SHAPE = (1, 28, 28)


def find(data_dir: str | Path) -> Path | None:
    return find_file(data_dir, NAME, FILE)


def read_silhouettes(path: str | Path) -> dict[str, np.ndarray]:
    """``{"train", "val", "test"}``: float32 ``[N, 784]`` row-major images in {0, 1}, the
    silhouette 1; :class:`DataError` naming the file and the fix unless the published layout."""
    fix = replace_it(NAME, URL)
    mat = load_mat(Path(path), VARIABLES.values(), fix)
    out = {}
    for split, var in VARIABLES.items():
        a = mat.get(var)
        shape = (COUNTS[split], PIXELS)
        numeric = isinstance(a, np.ndarray) and (np.issubdtype(a.dtype, np.number)
                                                 or a.dtype == np.bool_)
        if not numeric or a.shape != shape:
            raise DataError(f"{path} holds {var}: {describe(a)}, not the published "
                            f"{list(shape)}; {fix}")
        if not ((a == 0) | (a == 1)).all():
            raise DataError(f"{path}: {var} has values other than 0 and 1; {fix}")
        out[split] = 1.0 - column_major_images(a.astype(np.float32))
    return out


def load(data_dir: str, split_seed: int = 0) -> LoadedData:
    """The file from ``data_dir``, verified (layout; sha256 as recorded at its first use), as
    the published 4,100 / 2,264 / 2,307 split. ``split_seed`` does not apply."""
    path = find(data_dir)
    if path is None:
        raise not_found(NAME, [FILE], data_dir, URL)
    parts = {s: torch.from_numpy(x) for s, x in
             verified(path, data_dir, NAME, URL, read_silhouettes).items()}
    return LoadedData(name=NAME, source="full", train=parts["train"], val=parts["val"],
                      test=parts["test"], image_shape=IMAGE_SHAPE, note="",
                      location=str(path.parent))
