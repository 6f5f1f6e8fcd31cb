"""IDX reading and writing: round trips, the exact byte format, and corrupt files."""

import gzip

import numpy as np
import pytest
import torch

from nfvi.data import read_idx, write_idx
from nfvi.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (5, 28, 28), (2, 3, 4, 5)])
def test_round_trip_uint8(tmp_path, suffix, shape):
    arr = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / f"x-idx{suffix}"
    write_idx(path, arr)
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == shape
    assert np.array_equal(out.numpy(), arr)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip_other_types(tmp_path, dtype):
    arr = (np.arange(24).reshape(2, 3, 4) - 10).astype(dtype)
    write_idx(tmp_path / "x", arr)
    out = read_idx(tmp_path / "x")
    assert out.numpy().dtype == np.dtype(dtype)
    assert np.array_equal(out.numpy(), arr)


def test_accepts_tensor_and_writes_the_official_header(tmp_path):
    write_idx(tmp_path / "labels", torch.tensor([3, 1, 4], dtype=torch.uint8))
    raw = (tmp_path / "labels").read_bytes()
    # magic 0x00000801 (ubyte, 1 dim), count 3 big-endian, then the bytes
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_gz_file_is_gzip_and_detected_without_suffix(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", arr)
    raw = (tmp_path / "a.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(raw)[:4] == bytes([0, 0, 8, 1])
    (tmp_path / "misnamed").write_bytes(raw)
    assert np.array_equal(read_idx(tmp_path / "misnamed").numpy(), arr)


def test_unreadable_type_is_refused_on_write(tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))


def _expect_error(path, *words):
    with pytest.raises(DataError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_bad_magic(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    _expect_error(path, "magic")


def test_unknown_type_code(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 0]))
    _expect_error(path, "magic")


def test_empty_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"")
    _expect_error(path, "not an IDX file")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_data(tmp_path, suffix):
    path = tmp_path / f"imgs{suffix}"
    write_idx(tmp_path / "full", np.zeros((4, 28, 28), dtype=np.uint8))
    payload = (tmp_path / "full").read_bytes()[:-1]
    path.write_bytes(gzip.compress(payload) if suffix else payload)
    _expect_error(path, "truncated")


def test_extra_bytes(tmp_path):
    path = tmp_path / "x"
    write_idx(path, np.zeros(5, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    _expect_error(path, "needs 5")


def test_truncated_header(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2]))
    _expect_error(path, "header")


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.arange(200, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-12])  # cut the stream and its trailer
    _expect_error(path, "gzip")


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope", "cannot read")
