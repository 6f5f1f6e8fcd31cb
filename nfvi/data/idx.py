"""Reader and writer for the IDX format used by the MNIST family of data sets.

An IDX file is a big-endian header followed by the raw array (http://yann.lecun.com/exdb/mnist/):

* 4-byte magic ``0x00 0x00 <type> <ndim>``, where ``type`` is 0x08 for unsigned bytes (the only
  type MNIST and Fashion-MNIST use; the other spec types are supported as well);
* ``ndim`` big-endian uint32 sizes;
* ``prod(sizes)`` elements in C order, big-endian.

Files may be gzipped (as distributed); that is detected from the gzip magic bytes, so a
misnamed file still loads.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from nfvi.errors import DataError

# IDX type code -> big-endian numpy dtype (the spec's table).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(
            f"cannot read IDX file {path} ({e.strerror}); check the path and its permissions"
        ) from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"IDX file {path} is a corrupt or truncated gzip file ({e}); download it again"
        ) from e


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file (plain or gzipped) into a tensor.

    Returns a tensor of the file's shape, e.g. ``uint8 [N, 28, 28]`` for MNIST images and
    ``uint8 [N]`` for labels. Multi-byte types come back in native byte order.
    Raises :class:`DataError` naming the file if it is unreadable, has a bad magic number or
    its size does not match its header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {data[:4].hex() or 'none'}"
            "); replace it with the original file"
        )
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if ndim == 0 or len(data) < header_len:
        raise DataError(
            f"IDX file {path} has a truncated or invalid header; replace it with the original file"
        )
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[data[2]]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header_len != expected:
        raise DataError(
            f"IDX file {path} holds {len(data) - header_len} data bytes but its "
            f"header {shape} needs {expected}; the file is truncated or corrupt, "
            "replace it with the original file"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    # astype copies into a writable, native-endian array (torch refuses big-endian and
    # warns on read-only buffers).
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))


def write_idx(path: str | os.PathLike, array: np.ndarray | torch.Tensor) -> None:
    """Write ``array`` (any shape, normally ``uint8``) as an IDX file; gzipped if the path ends
    in ``.gz``. The inverse of :func:`read_idx`, byte-identical to the official file format."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(
            f"IDX cannot store dtype {array.dtype}; use uint8, int8, int16, "
            "int32, float32 or float64"
        )
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        # mtime=0 keeps the output reproducible byte for byte.
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
