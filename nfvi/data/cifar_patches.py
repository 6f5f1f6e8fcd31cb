"""CIFAR-10 patches: random 3x8x8 crops of CIFAR-10 images, continuous pixels in (0, 1) for the
logit-normal likelihood (Rezende & Mohamed 2015, section 6.2 and Table 3).

Format: the BINARY version of CIFAR-10, ``cifar-10-binary.tar.gz`` (Krizhevsky 2009), read with
:mod:`tarfile` and numpy (the pickled "python version" is never used, nothing is unpickled).
Members ``cifar-10-batches-bin/data_batch_1.bin`` ... ``data_batch_5.bin`` and
``cifar-10-batches-bin/test_batch.bin``, each exactly 10,000 records of 3,073 bytes: one label
byte (0-9), then 3,072 pixel bytes channel-major (1,024 red, 1,024 green, 1,024 blue, each
32x32 row-major). Member names, sizes and label range are verified.

Split (nfvi's choice; the paper does not give one): a seeded shuffle (``split_seed``) of the
50,000 training images holds out a tenth, 5,000, for validation; test_batch gives the test
set. Each image yields ONE patch, its top-left corner drawn uniformly from the 25 x 25
positions with a generator seeded by ``split_seed``: 45,000 train / 5,000 validation / 10,000
test patches of 3 x 8 x 8 = 192 values (val_size does not apply). Levels ``v`` in {0..255}
become ``x = eps + (1 - 2 eps) v / 255`` with ``eps = 1e-4``, strictly inside (0, 1) as the
logit-normal likelihood needs.

Source: https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
(page: https://www.cs.toronto.edu/~kriz/cifar.html).
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from nfvi.data.common import LoadedData, find_file, not_found, one_line, replace_it, verified
from nfvi.errors import DataError

NAME = "cifar10_patches"
FILE = "cifar-10-binary.tar.gz"
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
HOME = "https://www.cs.toronto.edu/~kriz/cifar.html"
FOLDER = "cifar-10-batches-bin"
TRAIN_MEMBERS = tuple(f"{FOLDER}/data_batch_{i}.bin" for i in range(1, 6))
TEST_MEMBER = f"{FOLDER}/test_batch.bin"
RECORDS = 10000  # records per member, as published
RECORD_BYTES = 1 + 3 * 32 * 32
PATCH = 8
EPS = 1e-4
IMAGE_SHAPE = (3, PATCH, PATCH)


def find(data_dir: str | Path) -> Path | None:
    return find_file(data_dir, NAME, FILE)


def split_sizes(n_train_images: int, n_test_images: int) -> tuple[int, int, int]:
    """(train, validation, test) patch counts: one patch per image, a tenth of the training
    images held out for validation."""
    n_val = n_train_images // 10
    return n_train_images - n_val, n_val, n_test_images


def _member(tar: tarfile.TarFile, path: Path, name: str, fix: str) -> np.ndarray:
    """One batch file's records as uint8 ``[RECORDS, 3073]``, checked."""
    try:
        info = tar.getmember(name)
    except KeyError:
        raise DataError(f"{path} has no member {name}; {fix}") from None
    size = RECORDS * RECORD_BYTES
    if not info.isfile() or info.size != size:
        raise DataError(f"{path}: {name} is not a file of {size} bytes ({RECORDS} records of "
                        f"{RECORD_BYTES}); {fix}")
    f = tar.extractfile(info)
    records = np.frombuffer(f.read(), np.uint8) if f is not None else np.empty(0, np.uint8)
    if records.size != size:
        raise DataError(f"{path}: {name} is truncated; {fix}")
    records = records.reshape(RECORDS, RECORD_BYTES)
    if records[:, 0].max() > 9:
        raise DataError(f"{path}: {name} has labels outside 0-9 (not CIFAR-10 records); {fix}")
    return records


def read_cifar(path: str | Path) -> dict[str, np.ndarray]:
    """``{"train", "test"}``: uint8 images ``[N, 3, 32, 32]`` (50,000 and 10,000 as
    published); :class:`DataError` naming the file and the fix unless the published layout."""
    fix = replace_it(NAME, URL)
    try:
        with tarfile.open(str(path), "r:gz") as tar:
            train = np.concatenate([_member(tar, Path(path), m, fix) for m in TRAIN_MEMBERS])
            test = _member(tar, Path(path), TEST_MEMBER, fix)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable .tar.gz ({one_line(e)}); {fix}") from e
    return {"train": train[:, 1:].reshape(-1, 3, 32, 32),
            "test": test[:, 1:].reshape(-1, 3, 32, 32)}


def patches(images: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """One random ``3 x PATCH x PATCH`` crop per image of uint8 ``[N, 3, H, W]``, flattened:
    uint8 ``[N, 3 * PATCH * PATCH]``. Corners are drawn from ``generator``, in image order."""
    n, _, h, w = images.shape
    rows = torch.randint(0, h - PATCH + 1, (n,), generator=generator).numpy()
    cols = torch.randint(0, w - PATCH + 1, (n,), generator=generator).numpy()
    windows = np.lib.stride_tricks.sliding_window_view(images, (PATCH, PATCH), axis=(2, 3))
    return windows[np.arange(n), :, rows, cols].reshape(n, -1)  # [N, 3, P, P] -> rows


def to_unit(levels: np.ndarray) -> torch.Tensor:
    """Levels ``v`` in {0..255} -> float32 ``eps + (1 - 2 eps) v / 255``, inside (0, 1)."""
    return torch.from_numpy((EPS + (1.0 - 2.0 * EPS) * (levels / 255.0)).astype(np.float32))


def load(data_dir: str, split_seed: int = 0) -> LoadedData:
    """The archive from ``data_dir``, verified (layout; sha256 as recorded at its first use),
    as 45,000 / 5,000 / 10,000 patches drawn with ``split_seed`` (see the module docstring)."""
    path = find(data_dir)
    if path is None:
        raise not_found(NAME, [FILE], data_dir, URL)
    images = verified(path, data_dir, NAME, URL, read_cifar)
    gen = torch.Generator().manual_seed(split_seed)
    n = len(images["train"])
    _, n_val, _ = split_sizes(n, len(images["test"]))
    perm = torch.randperm(n, generator=gen)
    # every training image gets its corner first (in file order), then the split picks images
    train_patches = to_unit(patches(images["train"], gen))
    test_patches = to_unit(patches(images["test"], gen))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return LoadedData(name=NAME, source="full", train=train_patches[train_idx],
                      val=train_patches[val_idx], test=test_patches, image_shape=IMAGE_SHAPE,
                      note="", location=str(path.parent))
