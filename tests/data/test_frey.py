"""Frey Faces: the reader on files written in the published layout (Roweis' frey_rawface.mat:
``ff`` uint8 [560, 1965], one 28x20 row-major image per column), the split, and the checksums."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from nfvi.data import load_dataset
from nfvi.data.frey import read_frey
from nfvi.data.store import RECORD
from nfvi.errors import DataError


def write_frey(path, seed=0, n=1965, dtype=np.uint8):
    """A synthetic file in the real layout; frame j has pixel (r, c) = (j + 7 r + c) % 256
    in its first row block, so the orientation can be checked."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, 28, 20)).astype(dtype)
    frames[:, 0, :] = (np.arange(n)[:, None] + np.arange(20)[None, :]) % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    # column j = frame j flattened row-major
    scipy.io.savemat(str(path), {"ff": frames.reshape(n, 560).T.astype(dtype)})
    return frames


def test_reader_recovers_the_frames_row_major(tmp_path):
    frames = write_frey(tmp_path / "frey_rawface.mat")
    got = read_frey(tmp_path / "frey_rawface.mat")
    assert got.shape == (1965, 28, 20) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, frames)
    assert list(got[3, 0, :4]) == [3, 4, 5, 6]  # the first row runs along the 20 columns


def test_published_split_and_grey_levels(tmp_path):
    write_frey(tmp_path / "frey_faces" / "frey_rawface.mat")
    d = load_dataset("frey_faces", data_dir=str(tmp_path), split_seed=0)
    assert (len(d.train), len(d.val), len(d.test)) == (1565, 200, 200)
    assert d.train.shape[1] == 560 and d.image_shape == (1, 28, 20)
    levels = (d.train * 255).round()
    assert torch_all_close(d.train * 255, levels) and levels.max() <= 255
    other = load_dataset("frey_faces", data_dir=str(tmp_path), split_seed=1)
    assert not (other.test == d.test).all()  # the shuffle follows split_seed
    rows = {tuple(r.tolist()) for part in (d.train, d.val, d.test) for r in part}
    assert len(rows) == 1965  # a partition: nothing lost or repeated


def torch_all_close(a, b):
    return bool((a - b).abs().max() < 1e-4)


@pytest.mark.parametrize("bad", [
    {"ff": np.zeros((560, 100), np.uint8)},           # too few frames
    {"ff": np.zeros((560, 1965), np.float64)},        # not 8-bit
    {"faces": np.zeros((560, 1965), np.uint8)},       # no ff
])
def test_other_layouts_are_refused_with_the_fix(tmp_path, bad):
    path = tmp_path / "frey_rawface.mat"
    scipy.io.savemat(str(path), bad)
    with pytest.raises(DataError, match="replace it with https://cs.nyu.edu"):
        read_frey(path)


def test_a_missing_file_names_the_url_and_import(tmp_path):
    with pytest.raises(DataError, match="nfvi data import frey_faces PATH"):
        load_dataset("frey_faces", data_dir=str(tmp_path))


def test_a_file_changed_after_verification_is_an_error(tmp_path):
    path = tmp_path / "frey_rawface.mat"
    write_frey(path)
    load_dataset("frey_faces", data_dir=str(tmp_path))
    assert (tmp_path / RECORD).is_file()
    write_frey(path, seed=1)  # a different, equally well-formed file
    with pytest.raises(DataError, match="changed since it was verified"):
        load_dataset("frey_faces", data_dir=str(tmp_path))
