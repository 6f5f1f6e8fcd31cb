"""CIFAR-10 patches: the reader on a tiny cifar-10-binary.tar.gz with the real member names and
record layout (1 label byte + 3,072 channel-major pixel bytes), the patches, the (0, 1) levels
the logit-normal likelihood needs, the split, the checks and the checksums."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from nfvi.data import cifar_patches, load_dataset
from nfvi.data.cifar_patches import EPS, FILE, read_cifar, split_sizes, to_unit
from nfvi.data.store import RECORD
from nfvi.errors import DataError
from nfvi.vae.likelihoods import LogitNormal

RECORDS = 12  # per batch file instead of 10,000
MEMBERS = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)]
TEST = "cifar-10-batches-bin/test_batch.bin"


def batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """Records <1 x label><3072 x pixel>: uint8 [n, 3, 32, 32] flattened channel-major."""
    return np.concatenate([labels[:, None], images.reshape(len(images), -1)], axis=1).tobytes()


def write_cifar(path, records=RECORDS, seed=0, replace=None) -> dict[str, np.ndarray]:
    """The archive with five training batches and the test batch (and the metadata file the
    real one has); ``replace`` maps a member name to other bytes (or None: left out)."""
    rng = np.random.default_rng(seed)
    members, out = {}, {"train": [], "test": None}
    for name in [*MEMBERS, TEST]:
        images = rng.integers(0, 256, (records, 3, 32, 32), dtype=np.uint8)
        members[name] = batch_bytes(images, rng.integers(0, 10, records, dtype=np.uint8))
        if name == TEST:
            out["test"] = images
        else:
            out["train"].append(images)
    members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\nautomobile\n"
    members.update(replace or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(str(path), "w:gz") as tar:
        for name, data in members.items():
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out["train"] = np.concatenate(out["train"])
    return out


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(cifar_patches, "RECORDS", RECORDS)


def test_the_published_layout_and_the_split():
    assert cifar_patches.RECORDS == 10000 and cifar_patches.RECORD_BYTES == 3073
    assert cifar_patches.TRAIN_MEMBERS == tuple(MEMBERS) and cifar_patches.TEST_MEMBER == TEST
    assert split_sizes(50000, 10000) == (45000, 5000, 10000)
    assert cifar_patches.IMAGE_SHAPE == (3, 8, 8)


def test_records_are_read_channel_major(tmp_path, tiny):
    images = write_cifar(tmp_path / FILE)
    got = read_cifar(tmp_path / FILE)
    np.testing.assert_array_equal(got["train"], images["train"])  # batches 1..5 in order
    np.testing.assert_array_equal(got["test"], images["test"])


def test_each_patch_is_a_crop_of_its_image():
    images = np.arange(2 * 3 * 32 * 32, dtype=np.int64).reshape(2, 3, 32, 32) % 251
    images = images.astype(np.uint8)
    gen = torch.Generator().manual_seed(3)
    out = cifar_patches.patches(images, gen)
    gen = torch.Generator().manual_seed(3)
    rows, cols = torch.randint(0, 25, (2,), generator=gen), torch.randint(0, 25, (2,),
                                                                          generator=gen)
    for k in range(2):
        r, c = int(rows[k]), int(cols[k])
        np.testing.assert_array_equal(out[k], images[k, :, r:r + 8, c:c + 8].reshape(-1))


def test_levels_map_strictly_inside_zero_one():
    x = to_unit(np.array([0, 1, 128, 255], np.uint8))
    assert x.dtype == torch.float32
    assert x[0] == pytest.approx(EPS) and x[-1] == pytest.approx(1 - EPS)
    assert (x > 0).all() and (x < 1).all() and (x.diff() > 0).all()


def test_load_gives_patches_split_by_seed(tmp_path, tiny):
    images = write_cifar(tmp_path / "cifar10_patches" / FILE)
    d = load_dataset("cifar10_patches", data_dir=str(tmp_path), split_seed=0)
    n = 5 * RECORDS
    assert (len(d.train), len(d.val), len(d.test)) == split_sizes(n, RECORDS) == (54, 6, 12)
    assert d.image_shape == (3, 8, 8) and d.train.shape[1] == 192
    assert d.train.dtype == torch.float32
    for x in (d.train, d.val, d.test):
        assert (x > 0).all() and (x < 1).all()
        levels = (x - EPS) / (1 - 2 * EPS) * 255
        assert (levels - levels.round()).abs().max() < 1e-3  # still the 256 levels
    # every patch is one of the 25 x 25 crops of a training image, each image used once
    crops = {}
    for k, im in enumerate(images["train"]):
        for r in range(25):
            for c in range(25):
                crops.setdefault(im[:, r:r + 8, c:c + 8].tobytes(), k)
    used = [crops[((x - EPS) / (1 - 2 * EPS) * 255).round().to(torch.uint8).numpy().tobytes()]
            for x in torch.cat([d.train, d.val])]
    assert sorted(used) == list(range(n))
    out = torch.zeros(len(d.test), 192 * 2)
    assert torch.isfinite(LogitNormal().log_prob(out, d.test)).all()
    other = load_dataset("cifar10_patches", data_dir=str(tmp_path), split_seed=1)
    assert not torch.equal(other.test, d.test)


@pytest.mark.parametrize(("replace", "what"), [
    ({MEMBERS[2]: None}, "no member cifar-10-batches-bin/data_batch_3.bin"),
    ({TEST: b"\x00" * (3073 * RECORDS - 1)}, "test_batch.bin is not a file of 36876 bytes"),
    ({MEMBERS[0]: b"\x0a" * (3073 * RECORDS)}, "labels outside 0-9"),
])
def test_a_wrong_archive_is_one_line_naming_it_and_the_fix(tmp_path, tiny, replace, what):
    path = tmp_path / FILE
    write_cifar(path, replace=replace)
    with pytest.raises(DataError) as err:
        load_dataset("cifar10_patches", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and what in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in msg
    assert "nfvi data import cifar10_patches PATH" in msg


def test_not_a_tar_gz_or_truncated_is_refused(tmp_path, tiny):
    path = tmp_path / FILE
    path.write_bytes(b"not gzip at all" * 10)
    with pytest.raises(DataError, match="not a readable .tar.gz"):
        read_cifar(path)
    write_cifar(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz"):
        read_cifar(path)


def test_a_file_changed_after_verification_is_an_error(tmp_path, tiny):
    write_cifar(tmp_path / FILE)
    load_dataset("cifar10_patches", data_dir=str(tmp_path))
    assert FILE in (tmp_path / RECORD).read_text()
    write_cifar(tmp_path / FILE, seed=1)
    with pytest.raises(DataError, match="changed since it was verified"):
        load_dataset("cifar10_patches", data_dir=str(tmp_path))
