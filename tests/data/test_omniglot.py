"""Omniglot: the reader on a tiny chardata.mat in the published layout (``data`` / ``testdata``
[784, N], one column-major image per column), upright images, the 1,345 hold-out split, the
checks and the checksums."""

from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.io
import torch

from nfvi.data import catalog, load_dataset, omniglot
from nfvi.data.omniglot import read_chardata, split_sizes
from nfvi.data.store import RECORD
from nfvi.errors import DataError

N_TRAIN, N_TEST, N_VAL = 30, 7, 4


def known_images(n: int, rng) -> np.ndarray:
    """Grey images [n, 28, 28] with a marker that only reads right way up: the top row is
    bright from column 20 on, the left column is dark."""
    images = rng.random((n, 28, 28)) * 0.5
    images[:, 0, 20:] = 1.0
    images[:, :, 0] = 0.0
    return images


def as_columns(images: np.ndarray) -> np.ndarray:
    """[n, 28, 28] -> [784, n], each column one image flattened column-major (MATLAB's (:))."""
    return np.stack([im.flatten(order="F") for im in images], axis=1)


def write_chardata(path, n_train=N_TRAIN, n_test=N_TEST, seed=0, **override):
    rng = np.random.default_rng(seed)
    train, test = known_images(n_train, rng), known_images(n_test, rng)
    mat = {"data": as_columns(train), "testdata": as_columns(test),
           "target": np.zeros((50, n_train)), **override}  # labels too, as in the real file
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), mat)
    return train, test


@pytest.fixture
def tiny(monkeypatch):
    """The published layout with a few images; N_VAL held out instead of 1,345."""
    monkeypatch.setattr(omniglot, "SHAPES", {"data": (784, N_TRAIN), "testdata": (784, N_TEST)})
    monkeypatch.setattr(omniglot, "N_VAL", N_VAL)


def test_the_published_layout_and_split():
    assert omniglot.SHAPES == {"data": (784, 24345), "testdata": (784, 8070)}
    assert split_sizes(24345) == (23000, 1345)  # as Burda et al. / van den Berg et al.


def test_images_come_out_upright_and_unscrambled(tmp_path, tiny):
    train, test = write_chardata(tmp_path / "chardata.mat")
    got = read_chardata(tmp_path / "chardata.mat")
    assert got["train"].shape == (N_TRAIN, 784) and got["train"].dtype == np.float32
    np.testing.assert_allclose(got["train"].reshape(-1, 28, 28), train, rtol=1e-6)
    np.testing.assert_allclose(got["test"].reshape(-1, 28, 28), test, rtol=1e-6)
    rows = got["test"].reshape(-1, 28, 28)
    assert (rows[:, 0, 20:] == 1).all() and (rows[:, :, 0] == 0).all()
    assert (rows[:, 20:, 0] == 0).all()  # not transposed


def test_the_split_holds_out_n_val_by_split_seed(tmp_path, tiny):
    train, test = write_chardata(tmp_path / "omniglot" / "chardata.mat")
    d = load_dataset("omniglot", data_dir=str(tmp_path), split_seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (N_TRAIN - N_VAL, N_VAL, N_TEST)
    assert d.image_shape == (1, 28, 28) and d.train.dtype == torch.float32
    assert 0 <= d.train.min() and d.train.max() <= 1
    originals = {tuple(np.float32(im).reshape(-1)) for im in train}
    got = [tuple(r.tolist()) for part in (d.train, d.val) for r in part]
    assert set(got) == originals and len(got) == N_TRAIN  # a partition of the training images
    np.testing.assert_allclose(d.test.numpy().reshape(-1, 28, 28), test, rtol=1e-6)
    other = load_dataset("omniglot", data_dir=str(tmp_path), split_seed=1)
    assert not torch.equal(other.val, d.val)


@pytest.mark.parametrize(("override", "what"), [
    ({"data": np.zeros((784, N_TRAIN - 1))}, "data: float64 [784, 29]"),
    ({"testdata": np.zeros((N_TEST, 784))}, "testdata: float64 [7, 784]"),
    ({"data": np.zeros((784, N_TRAIN), np.uint8)}, "data: uint8"),
    ({"data": np.full((784, N_TRAIN), 1.5)}, "values outside [0, 1]"),
])
def test_a_wrong_layout_is_one_line_naming_the_file_and_the_fix(tmp_path, tiny, override, what):
    path = tmp_path / "chardata.mat"
    write_chardata(path, **override)
    with pytest.raises(DataError) as err:
        load_dataset("omniglot", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and what in msg
    assert "nfvi data fetch omniglot or nfvi data import omniglot PATH" in msg


def test_a_file_without_the_variables_or_not_matlab_is_refused(tmp_path, tiny):
    path = tmp_path / "chardata.mat"
    scipy.io.savemat(str(path), {"images": np.zeros((784, 3))})
    with pytest.raises(DataError, match="holds data: nothing"):
        read_chardata(path)
    path.write_bytes(b"not a MATLAB file" * 20)
    with pytest.raises(DataError, match="not a readable MATLAB file"):
        read_chardata(path)
    with pytest.raises(DataError, match="chardata.mat not found.*yburda/iwae"):
        load_dataset("omniglot", data_dir=str(tmp_path / "empty"))


def test_a_file_changed_after_verification_is_an_error(tmp_path, tiny):
    write_chardata(tmp_path / "chardata.mat")
    load_dataset("omniglot", data_dir=str(tmp_path))
    assert "chardata.mat" in (tmp_path / RECORD).read_text()
    write_chardata(tmp_path / "chardata.mat", seed=1)
    with pytest.raises(DataError, match="changed since it was verified"):
        load_dataset("omniglot", data_dir=str(tmp_path))


def test_import_puts_a_verified_copy_in_the_data_dir(tmp_path, tiny):
    write_chardata(tmp_path / "src" / "chardata.mat")
    stored = catalog.import_file("omniglot", tmp_path / "src" / "chardata.mat", tmp_path / "d")
    assert stored == tmp_path / "d" / "omniglot" / "chardata.mat"
    assert catalog.entry("omniglot").find(tmp_path / "d") == stored
    assert len(load_dataset("omniglot", data_dir=str(tmp_path / "d")).test) == N_TEST


def test_download_true_fetches_a_missing_file(tmp_path, tiny, monkeypatch):
    write_chardata(tmp_path / "served.mat")
    served = (tmp_path / "served.mat").read_bytes()
    urls = []

    def urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(served)

    monkeypatch.setattr(catalog.urllib.request, "urlopen", urlopen)
    d = load_dataset("omniglot", data_dir=str(tmp_path / "d"), download=True)
    assert urls == [omniglot.URL] and len(d.train) == N_TRAIN - N_VAL
    load_dataset("omniglot", data_dir=str(tmp_path / "d"), download=True)
    assert len(urls) == 1  # present: not fetched again
