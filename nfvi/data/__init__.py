"""Data: MNIST / Fashion-MNIST loading (full IDX files or the bundled 5,000-digit subset) and
binarization.

``load_dataset`` returns a :class:`LoadedData` with float32 ``[N, 784]`` grey levels in [0, 1];
``binarize`` / ``fixed_binarization`` turn them into {0, 1} pixels.
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
