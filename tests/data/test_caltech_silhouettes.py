"""Caltech 101 Silhouettes: the reader on a tiny .mat in the published layout (``train_data`` /
``val_data`` / ``test_data`` [N, 784], column-major rows, binary with the silhouette 0), upright
and inverted images, the published split, the checks and the checksums."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from nfvi.data import caltech, load_dataset
from nfvi.data.caltech import FILE, read_silhouettes
from nfvi.data.store import RECORD
from nfvi.errors import DataError

TINY_COUNTS = {"train": 12, "val": 5, "test": 4}
VARS = {"train": "train_data", "val": "val_data", "test": "test_data"}


def write_caltech(path, counts=None, seed=0, **override) -> dict[str, np.ndarray]:
    """Silhouettes [n, 28, 28] in {0, 1} (object = 1) per split, stored as the real file:
    ``1 - image`` flattened column-major, one per row, as doubles. Each object has a bar along
    its top row from column 15 on and nothing in the left column."""
    counts = counts or TINY_COUNTS
    rng = np.random.default_rng(seed)
    mat, out = {}, {}
    for split, n in counts.items():
        images = (rng.random((n, 28, 28)) < 0.4).astype(np.float64)
        images[:, 0, 15:], images[:, :, 0] = 1.0, 0.0
        mat[VARS[split]] = np.stack([(1.0 - im).flatten(order="F") for im in images])
        mat[split + "_labels"] = np.ones((n, 1))  # the real file has labels too
        out[split] = images
    mat.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), mat)
    return out


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(caltech, "COUNTS", dict(TINY_COUNTS))


def test_the_published_split_is_4100_2264_2307():
    assert caltech.COUNTS == {"train": 4100, "val": 2264, "test": 2307}


def test_images_come_out_upright_with_the_silhouette_one(tmp_path, tiny):
    images = write_caltech(tmp_path / "caltech_silhouettes" / FILE)
    d = load_dataset("caltech_silhouettes", data_dir=str(tmp_path))
    assert (len(d.train), len(d.val), len(d.test)) == (12, 5, 4)
    assert d.image_shape == (1, 28, 28)
    for split, x in (("train", d.train), ("val", d.val), ("test", d.test)):
        assert x.shape[1] == 784 and set(x.unique().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(x.numpy().reshape(-1, 28, 28), images[split])
    top = d.test.view(-1, 28, 28)
    assert (top[:, 0, 15:] == 1).all() and (top[:, :, 0] == 0).all()


def test_integer_pixels_are_read_too(tmp_path, tiny):
    images = write_caltech(tmp_path / FILE)
    mat = scipy.io.loadmat(str(tmp_path / FILE))
    scipy.io.savemat(str(tmp_path / FILE), {v: mat[v].astype(np.uint8) for v in VARS.values()})
    got = read_silhouettes(tmp_path / FILE)
    np.testing.assert_array_equal(got["val"].reshape(-1, 28, 28), images["val"])


@pytest.mark.parametrize(("override", "what"), [
    ({"train_data": np.zeros((11, 784))}, "train_data: float64 [11, 784], not the published"),
    ({"val_data": np.zeros((784, 5))}, "val_data: float64 [784, 5]"),
    ({"test_data": np.full((4, 784), 0.5)}, "test_data has values other than 0 and 1"),
])
def test_a_wrong_layout_is_one_line_naming_the_file_and_the_fix(tmp_path, tiny, override, what):
    path = tmp_path / FILE
    write_caltech(path, **override)
    with pytest.raises(DataError) as err:
        load_dataset("caltech_silhouettes", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and what in msg
    assert "people.cs.umass.edu/~marlin/data/caltech101_silhouettes_28_split1.mat" in msg
    assert "nfvi data import caltech_silhouettes PATH" in msg


def test_a_missing_file_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="caltech101_silhouettes_28_split1.mat not found .*nfvi "
                                        "data fetch caltech_silhouettes"):
        load_dataset("caltech_silhouettes", data_dir=str(tmp_path))


def test_a_file_changed_after_verification_is_an_error(tmp_path, tiny):
    write_caltech(tmp_path / FILE)
    load_dataset("caltech_silhouettes", data_dir=str(tmp_path))
    assert FILE in (tmp_path / RECORD).read_text()
    write_caltech(tmp_path / FILE, seed=1)
    with pytest.raises(DataError, match="changed since it was verified"):
        load_dataset("caltech_silhouettes", data_dir=str(tmp_path))
