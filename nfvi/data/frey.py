"""Frey Faces (Brendan Frey's 1,965 video frames of one face, 20 x 28 grey levels).

The published file is Sam Roweis' ``frey_rawface.mat`` (https://cs.nyu.edu/~roweis/data.html):
one MATLAB variable ``ff``, uint8 ``[560, 1965]``, each column one image of 28 rows x 20
columns stored row-major (column ``j`` reshaped C-order to ``[28, 20]`` is frame ``j``). It is
read with :func:`scipy.io.loadmat` (a MATLAB v4/v5 reader: nothing is unpickled) and verified
by its exact shape and dtype before use. Split as van den Berg et al. 2018: a seeded shuffle
(``split_seed``), then 1,565 train / 200 validation / 200 test. Pixels stay 8-bit
(``v / 255``) for the 256-way categorical likelihood.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nfvi.errors import DataError

FILE = "frey_rawface.mat"
VARIABLE = "ff"
IMAGE_SHAPE = (1, 28, 20)
N_IMAGES = 1965
SPLIT = (1565, 200, 200)
URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"


def find_file(data_dir: str | Path) -> Path | None:
    """``<data_dir>/frey_faces/frey_rawface.mat`` or ``<data_dir>/frey_rawface.mat``."""
    for p in (Path(data_dir) / "frey_faces" / FILE, Path(data_dir) / FILE):
        if p.is_file():
            return p
    return None


def read_frey(path: str | Path) -> np.ndarray:
    """The frames of ``frey_rawface.mat`` as uint8 ``[1965, 28, 20]``; :class:`DataError`
    (naming the file and the fix) when it is not the published file's layout."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises ValueError, MatReadError, OSError... for bad files
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: "
                        f"{' '.join(str(e).split())}); replace it with {URL}") from e
    ff = mat.get(VARIABLE)
    if not isinstance(ff, np.ndarray) or ff.dtype != np.uint8 or ff.shape != (560, N_IMAGES):
        got = "no variable 'ff'" if ff is None else f"ff {getattr(ff, 'dtype', '?')} " \
            f"{getattr(ff, 'shape', '?')}"
        raise DataError(f"{path} holds {got}, not the published uint8 ff [560, {N_IMAGES}]; "
                        f"replace it with {URL}")
    return np.ascontiguousarray(ff.T).reshape(N_IMAGES, 28, 20)


def split_frey(frames: np.ndarray, split_seed: int) -> dict[str, torch.Tensor]:
    """float32 ``[N, 560]`` in [0, 1] per split after a seeded shuffle (1565 / 200 / 200)."""
    x = torch.from_numpy(frames.reshape(len(frames), -1).astype(np.float32) / 255.0)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    a, b, _ = SPLIT
    return {"train": x[perm[:a]], "val": x[perm[a : a + b]], "test": x[perm[a + b :]]}
