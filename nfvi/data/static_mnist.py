"""Static binarized MNIST: the fixed binarization of Larochelle & Murray (2011).

Format: three text files, ``binarized_mnist_train.amat``, ``binarized_mnist_valid.amat`` and
``binarized_mnist_test.amat``, one image per line: 784 whitespace-separated values, each ``0``
or ``1``, row-major 28x28 (the MNIST digits, each pixel sampled once from its grey level).
Split as published: 50,000 train / 10,000 validation / 10,000 test, one file each (split_seed
and val_size do not apply). Every line is verified (784 values, only 0 and 1) and the image
counts must be exactly those; the pixels are already binary, so the config thresholds at 0.5,
which is the identity on {0, 1}.

Source: http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/ (Hugo Larochelle's
page; the IWAE and Sylvester-flows papers point there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nfvi.data.common import LoadedData, find_file, not_found, replace_it, verified
from nfvi.errors import DataError

NAME = "static_mnist"
BASE_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
FILES = {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat",
         "test": "binarized_mnist_test.amat"}
COUNTS = {"train": 50000, "val": 10000, "test": 10000}  # images per file, as published
PIXELS = 784
IMAGE_SHAPE = (1, 28, 28)
_PAIRS = (b"00", b"01", b"10", b"11")  # two digits in a row: a token that is not 0 or 1


def url(split: str) -> str:
    return BASE_URL + FILES[split]


def find_files(data_dir: str | Path) -> dict[str, Path]:
    """The files present, by split (``<data_dir>/static_mnist/FILE`` or ``<data_dir>/FILE``)."""
    found = {s: find_file(data_dir, NAME, f) for s, f in FILES.items()}
    return {s: p for s, p in found.items() if p is not None}


def find_dir(data_dir: str | Path) -> Path | None:
    """Where the training file is, when all three files are present; else None."""
    found = find_files(data_dir)
    return found["train"].parent if len(found) == len(FILES) else None


def read_amat(path: str | Path, split: str) -> np.ndarray:
    """The images of one ``.amat`` file as uint8 ``[N, 784]`` in {0, 1}, ``N = COUNTS[split]``;
    :class:`DataError` naming the file, the first bad line and the fix otherwise."""
    fix = replace_it(NAME, url(split))
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        raise DataError(f"{path} cannot be read ({e.strerror}); {fix}") from e
    rows = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # a blank (e.g. the final) line holds no image
        digits = line.translate(None, b" \t\r")
        if (len(digits) != PIXELS or digits.translate(None, b"01")
                or any(p in line for p in _PAIRS)):
            raise DataError(f"{path} line {i} is not {PIXELS} space-separated 0/1 values; {fix}")
        rows.append(digits)
    expected = COUNTS[split]
    if len(rows) != expected:
        raise DataError(f"{path} holds {len(rows)} images, not the published {expected} of "
                        f"{FILES[split]}; {fix}")
    return (np.frombuffer(b"".join(rows), np.uint8) - ord("0")).reshape(expected, PIXELS)


def load(data_dir: str, split_seed: int = 0) -> LoadedData:
    """The three files from ``data_dir``, each verified (layout; sha256 as recorded at its first
    use), as the published 50k / 10k / 10k split. ``split_seed`` does not apply."""
    found = find_files(data_dir)
    if len(found) < len(FILES):
        raise not_found(NAME, [f for s, f in FILES.items() if s not in found], data_dir, BASE_URL)
    parts = {s: torch.from_numpy(verified(p, data_dir, NAME, url(s),
                                          lambda q, s=s: read_amat(q, s)).astype(np.float32))
             for s, p in found.items()}
    return LoadedData(name=NAME, source="full", train=parts["train"], val=parts["val"],
                      test=parts["test"], image_shape=IMAGE_SHAPE, note="",
                      location=str(found["train"].parent))
