"""Data: MNIST / Fashion-MNIST loading (full IDX files or the bundled 5,000-digit subset), the
datasets with their own published files (Frey Faces, static MNIST, Omniglot, Caltech 101
Silhouettes, CIFAR-10 patches; :mod:`nfvi.data.catalog` lists, fetches and imports them) and
binarization.

``load_dataset`` returns a :class:`LoadedData` with float32 ``[N, P]`` values in [0, 1];
``binarize`` / ``fixed_binarization`` turn grey levels into {0, 1} pixels.
"""

from nfvi.data.binarize import MODES as BINARIZE_MODES
from nfvi.data.binarize import binarize, fixed_binarization
from nfvi.data.idx import read_idx, write_idx
from nfvi.data.mnist import DATASETS, SOURCES, LoadedData, find_idx_files, load_dataset

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "SOURCES",
    "LoadedData",
    "binarize",
    "find_idx_files",
    "fixed_binarization",
    "load_dataset",
    "read_idx",
    "write_idx",
]
