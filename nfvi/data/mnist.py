"""Loading MNIST and Fashion-MNIST into memory as flat grey-level tensors.

Sources:

* ``full``: the official IDX files, found in ``data_dir`` in torchvision's layout
  (``<data_dir>/MNIST/raw/train-images-idx3-ubyte``, ``<data_dir>/FashionMNIST/raw/...``) or
  directly in ``data_dir`` (e.g. Debian's ``/usr/share/datasets/fashion-mnist``); each file
  plain or ``.gz``. Optionally downloaded by torchvision. Train is the official 60k training set
  minus a seeded random validation subset of ``val_size``; test is the official 10k test set.
* ``bundled`` (MNIST only): 5,000 real MNIST digits shipped inside the package with a fixed
  class-stratified split 4000 train / 500 val / 500 test (``val_size`` and ``split_seed`` do not
  apply). See ``scripts/make_bundled_mnist.py`` for provenance and licence.
* ``auto``: ``full`` if it can be found (or downloaded), else ``bundled`` with a loud note.

The datasets with their own published files (Frey Faces, static MNIST, Omniglot, Caltech 101
Silhouettes, CIFAR-10 patches) are loaded by their modules (see ``_FILE_DATASETS``); for them
``auto`` means ``full`` and ``download=True`` runs ``nfvi data fetch``.

Nothing is cached to disk: every call reads the files.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from nfvi.data import caltech, cifar_patches, frey, omniglot, static_mnist
from nfvi.data.common import LoadedData
from nfvi.data.idx import read_idx
from nfvi.data.store import check_recorded, record
from nfvi.errors import DataError

IMAGE_SHAPE = (1, 28, 28)
SOURCES = ("auto", "full", "bundled")
BUNDLED_FILE = "mnist_bundled.npz"

# The four official IDX files (without .gz), by role.
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Data set name -> (torchvision class / folder name, human-readable name).
_TORCHVISION = {"mnist": ("MNIST", "MNIST"), "fashion_mnist": ("FashionMNIST", "Fashion-MNIST")}


def load_dataset(
    name: str,
    source: str = "auto",
    data_dir: str = "data",
    download: bool = False,
    val_size: int = 10000,
    split_seed: int = 0,
) -> LoadedData:
    """Load ``name`` (one of :data:`DATASETS`) from ``source`` ("auto" | "full" | "bundled").

    ``val_size`` examples of the official training set, drawn with ``split_seed``, become the
    validation set (full sets only; the bundled subset has a fixed split). With
    ``download=True`` a missing full set is fetched by torchvision into
    ``<data_dir>/<MNIST|FashionMNIST>/raw``. Raises :class:`DataError` when the data cannot be
    had; only ``mnist`` with ``source="auto"`` falls back to the bundled subset, and then
    ``note`` says so.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; use one of {', '.join(DATASETS)}")
    if source not in SOURCES:
        raise DataError(f"unknown dataset source '{source}'; use one of {', '.join(SOURCES)}")
    if name in _FILE_DATASETS:  # each its own file format and fixed split
        return _load_files(name, source, data_dir, download, split_seed)
    if source == "bundled":
        if name != "mnist":
            raise DataError(
                f"there is no bundled subset of {name} (only of mnist); use "
                "dataset.source=full or auto with the IDX files in data_dir"
            )
        return _load_bundled(note="")

    folder, pretty = _TORCHVISION[name]
    files = find_idx_files(name, data_dir)
    problem = f"{pretty} files not found in {_where(data_dir, folder)}"
    if files is None and download:
        error = _download(name, data_dir)
        files = find_idx_files(name, data_dir)
        if files is None:
            problem = f"{pretty} download into {data_dir} failed ({error})"
    if files is not None:
        return _load_full(name, files, val_size, split_seed)

    raw_dir = Path(data_dir) / folder / "raw"
    fixes = [f"put the four IDX files (train-images-idx3-ubyte[.gz], ...) in {raw_dir}"]
    if not download:
        fixes.append("set dataset.download=true")
    if source == "full" or name != "mnist":
        if name == "mnist":
            fixes.append("use dataset.source=bundled")
        raise DataError(f"{problem}; {_either(fixes)}")
    note = (
        f"WARNING: {problem}. Using the BUNDLED 5,000-digit MNIST subset "
        "(4,000 train / 500 val / 500 test) instead; results are NOT comparable with "
        f"full-MNIST numbers. To use the full set, {_either(fixes)}."
    )
    return _load_bundled(note=note)


def _load_files(name: str, source: str, data_dir: str, download: bool,
                split_seed: int) -> LoadedData:
    """A dataset of :data:`_FILE_DATASETS`; ``download`` fetches its files when missing."""
    if source == "bundled":
        raise DataError(f"there is no bundled subset of {name}; use dataset.source=full "
                        f"with its files in data_dir (nfvi data import {name} PATH)")
    if download:
        from nfvi.data.catalog import CATALOG, fetch  # the catalog imports this module

        if CATALOG[name].find(Path(data_dir)) is None:
            fetch(name, data_dir)
    return _FILE_DATASETS[name](data_dir, split_seed)


def find_idx_files(name: str, data_dir: str | Path) -> dict[str, Path] | None:
    """The four IDX files of ``name`` under ``data_dir`` by role, or None if there are none.

    Looks in ``<data_dir>/<MNIST|FashionMNIST>/raw`` (torchvision), then ``data_dir`` itself;
    prefers an unzipped file over its ``.gz``. A directory holding only some of the four files
    raises :class:`DataError` (a broken download should not silently become a fallback).
    """
    folder, pretty = _TORCHVISION[name]
    data_dir = Path(data_dir)
    for directory in (data_dir / folder / "raw", data_dir):
        found: dict[str, Path] = {}
        for role, stem in _IDX_FILES.items():
            for candidate in (directory / stem, directory / f"{stem}.gz"):
                if candidate.is_file():
                    found[role] = candidate
                    break
        if len(found) == len(_IDX_FILES):
            return found
        if found:
            missing = [f"{_IDX_FILES[r]}[.gz]" for r in _IDX_FILES if r not in found]
            raise DataError(
                f"{pretty} in {directory} is incomplete (missing {', '.join(missing)}"
                "); add the missing files or remove the directory"
            )
    return None


def _where(data_dir: str, folder: str) -> str:
    """The places searched, for messages."""
    return (
        f"{Path(data_dir) / folder / 'raw'} or {data_dir} "
        f"(looked for {_IDX_FILES['train_images']}[.gz] and the other three IDX files)"
    )


def _either(options: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _download(name: str, data_dir: str) -> str:
    """Try torchvision's download into ``data_dir``; return "" or the reason it failed."""
    try:
        from torchvision import datasets

        cls = getattr(datasets, _TORCHVISION[name][0])
        cls(data_dir, train=True, download=True)
    except Exception as e:  # any failure (network, disk, checksum) is reported, not raised
        # torchvision's messages span lines (one per mirror tried); keep them on one line.
        return " ".join(f"{type(e).__name__}: {e}".split())
    return ""


def _read_pair(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as uint8 [N, 28, 28] and labels as int64 [N], checked against each other."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != IMAGE_SHAPE[1:]:
        raise DataError(
            f"{images_path} holds {images.dtype} {tuple(images.shape)}, not 28x28 "
            "uint8 images; replace it with the original file"
        )
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{labels_path} has {tuple(labels.shape)} labels for "
            f"{images.shape[0]} images in {images_path}; replace the pair with "
            "matching original files"
        )
    return images, labels.long()


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, ...] -> float32 [N, 784] in [0, 1]."""
    return images.reshape(images.shape[0], -1).float().div_(255.0)


def _load_full(name: str, files: dict[str, Path], val_size: int, split_seed: int) -> LoadedData:
    """The official train/test files, with a seeded validation split off the training set."""
    train_x, train_y = _read_pair(files["train_images"], files["train_labels"])
    test_x, test_y = _read_pair(files["test_images"], files["test_labels"])
    n = train_x.shape[0]
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size < n:
        raise DataError(
            f"dataset val_size={val_size!r} is invalid for {n} training examples; "
            f"use an integer between 1 and {n - 1}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    # Sorting keeps both parts in the files' order: the split is a pure subset choice.
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    return LoadedData(
        name=name,
        source="full",
        train=_to_float(train_x[train_idx]),
        val=_to_float(train_x[val_idx]),
        test=_to_float(test_x),
        image_shape=IMAGE_SHAPE,
        note="",
        location=str(files["train_images"].parent),
        train_labels=train_y[train_idx],
        val_labels=train_y[val_idx],
        test_labels=test_y,
    )


def _load_bundled(note: str) -> LoadedData:
    """The 5,000-digit subset shipped in the package (fixed 4000/500/500 split)."""
    ref = resources.files(__package__).joinpath(BUNDLED_FILE)
    try:
        with np.load(io.BytesIO(ref.read_bytes())) as z:
            arrays = {k: z[k] for k in z.files}
        splits = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "val", "test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"bundled MNIST file {ref} is missing or corrupt ({e}); reinstall nfvi "
            "or regenerate it with scripts/make_bundled_mnist.py"
        ) from e
    tensors = {
        s: (_to_float(torch.from_numpy(x)), torch.from_numpy(y).long())
        for s, (x, y) in splits.items()
    }
    return LoadedData(
        name="mnist",
        source="bundled",
        train=tensors["train"][0],
        val=tensors["val"][0],
        test=tensors["test"][0],
        image_shape=IMAGE_SHAPE,
        note=note,
        location=str(ref),
        train_labels=tensors["train"][1],
        val_labels=tensors["val"][1],
        test_labels=tensors["test"][1],
    )


def load_frey(data_dir: str, split_seed: int) -> LoadedData:
    """Frey Faces from ``frey_rawface.mat`` in ``data_dir`` (see :mod:`nfvi.data.frey`),
    verified (layout, and the sha256 recorded on first use) and split 1565 / 200 / 200."""
    path = frey.find_file(data_dir)
    if path is None:
        raise DataError(
            f"Frey Faces file {frey.FILE} not found in {Path(data_dir) / 'frey_faces'} or "
            f"{data_dir}; download it from {frey.URL} and run nfvi data import frey_faces PATH"
        )
    fix = f"replace it with the original ({frey.URL}) via nfvi data import frey_faces PATH"
    digest = check_recorded(path, data_dir, fix)
    frames = frey.read_frey(path)
    record(path, data_dir, digest)
    parts = frey.split_frey(frames, split_seed)
    return LoadedData(name="frey_faces", source="full", train=parts["train"], val=parts["val"],
                      test=parts["test"], image_shape=frey.IMAGE_SHAPE, note="",
                      location=str(path.parent))


# name -> loader(data_dir, split_seed) of the datasets with their own files and fixed splits
_FILE_DATASETS: dict[str, Callable[[str, int], LoadedData]] = {
    "frey_faces": load_frey,
    static_mnist.NAME: static_mnist.load,
    omniglot.NAME: omniglot.load,
    caltech.NAME: caltech.load,
    cifar_patches.NAME: cifar_patches.load,
}
DATASETS = ("mnist", "fashion_mnist", *_FILE_DATASETS)
