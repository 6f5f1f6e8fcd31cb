"""load_dataset: full sets from synthetic IDX files in both layouts, the bundled subset, the
fallback and every error path."""

from pathlib import Path

import numpy as np
import pytest
import torch

import nfvi.data.mnist as mnist_module
from nfvi.data import load_dataset, write_idx
from nfvi.errors import DataError

N_TRAIN, N_TEST = 60, 20
STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def make_set(directory: Path, gz: bool, n_train: int = N_TRAIN, n_test: int = N_TEST, seed=0):
    """Write a small synthetic set in the official format; return (train_x, train_y, test_x,
    test_y) as uint8 arrays. Image i carries its index in pixel 0 so rows can be traced."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = []
    for n in (n_train, n_test):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n)
        arrays += [x, rng.integers(0, 10, size=n, dtype=np.uint8)]
    for stem, arr in zip(STEMS, arrays, strict=True):
        write_idx(directory / (stem + (".gz" if gz else "")), arr)
    return arrays


def row_ids(x: torch.Tensor) -> list[int]:
    """The index make_set wrote into pixel 0 of each row of float [N, 784] images."""
    return (x[:, 0] * 255).round().long().tolist()


@pytest.fixture(params=["torchvision", "flat"])
def full_mnist(request, tmp_path):
    """A synthetic MNIST in torchvision's layout (gzipped) or flat in data_dir (plain)."""
    if request.param == "torchvision":
        arrays = make_set(tmp_path / "MNIST" / "raw", gz=True)
    else:
        arrays = make_set(tmp_path, gz=False)
    return tmp_path, arrays


@pytest.mark.parametrize("source", ["auto", "full"])
def test_full_set_shapes_split_and_values(full_mnist, source):
    data_dir, (train_x, train_y, test_x, test_y) = full_mnist
    d = load_dataset("mnist", source=source, data_dir=str(data_dir), val_size=15, split_seed=3)
    assert d.name == "mnist"
    assert d.source == "full"
    assert d.note == ""
    assert d.image_shape == (1, 28, 28)
    assert Path(d.location).is_dir()
    assert d.train.shape == (N_TRAIN - 15, 784)
    assert d.val.shape == (15, 784)
    assert d.test.shape == (N_TEST, 784)
    for t in (d.train, d.val, d.test):
        assert t.dtype == torch.float32
        assert t.min() >= 0.0
        assert t.max() <= 1.0
    # test set is exactly the written one, scaled by 1/255
    expected_test = torch.from_numpy(test_x.reshape(N_TEST, 784)).float() / 255
    assert torch.equal(d.test, expected_test)
    assert torch.equal(d.test_labels, torch.from_numpy(test_y).long())
    # train and val partition the written training set, labels travelling with their images
    train_ids, val_ids = row_ids(d.train), row_ids(d.val)
    assert sorted(train_ids + val_ids) == list(range(N_TRAIN))
    flat = torch.from_numpy(train_x.reshape(N_TRAIN, 784)).float() / 255
    assert torch.equal(d.val, flat[val_ids])
    assert torch.equal(d.train, flat[train_ids])
    assert torch.equal(d.val_labels, torch.from_numpy(train_y[val_ids]).long())


def test_split_is_seeded(full_mnist):
    data_dir, _ = full_mnist

    def val_ids(seed):
        return row_ids(
            load_dataset("mnist", data_dir=str(data_dir), val_size=10, split_seed=seed).val
        )

    assert val_ids(0) == val_ids(0)
    assert val_ids(0) != val_ids(1)


def test_unzipped_file_preferred_and_torchvision_layout_first(tmp_path):
    make_set(tmp_path, gz=False, seed=1)  # flat copy, different content
    _, _, tv_test, _ = make_set(tmp_path / "MNIST" / "raw", gz=True, seed=2)
    d = load_dataset("mnist", "full", str(tmp_path), val_size=5)
    assert Path(d.location) == tmp_path / "MNIST" / "raw"
    assert torch.equal(d.test, torch.from_numpy(tv_test.reshape(N_TEST, 784)).float() / 255)


def test_fashion_mnist_layouts(tmp_path):
    _, _, test_x, _ = make_set(tmp_path / "tv" / "FashionMNIST" / "raw", gz=True)
    d = load_dataset("fashion_mnist", "auto", str(tmp_path / "tv"), val_size=10)
    assert d.name == "fashion_mnist"
    assert d.source == "full"
    assert d.train.shape == (50, 784)
    assert d.test.shape == (20, 784)
    make_set(tmp_path / "debian", gz=True)  # like /usr/share/datasets/fashion-mnist
    d = load_dataset("fashion_mnist", "full", str(tmp_path / "debian"), val_size=10)
    assert torch.equal(d.test, torch.from_numpy(test_x.reshape(N_TEST, 784)).float() / 255)


def test_mnist_layout_is_not_fashion(tmp_path):
    make_set(tmp_path / "MNIST" / "raw", gz=True)
    with pytest.raises(DataError, match="Fashion-MNIST files not found"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("val_size", [0, -1, N_TRAIN, N_TRAIN + 1, 2.5, True])
def test_bad_val_size(full_mnist, val_size):
    data_dir, _ = full_mnist
    with pytest.raises(DataError, match="val_size"):
        load_dataset("mnist", data_dir=str(data_dir), val_size=val_size)


def test_auto_falls_back_to_bundled_loudly(tmp_path):
    d = load_dataset("mnist", "auto", str(tmp_path))
    assert d.source == "bundled"
    assert "WARNING" in d.note
    assert "BUNDLED" in d.note
    assert "5,000" in d.note
    assert str(tmp_path) in d.note  # says where it looked
    assert "dataset.download=true" in d.note  # and how to get the full set
    assert d.train.shape == (4000, 784)


def test_auto_falls_back_when_download_fails(tmp_path, monkeypatch):
    calls = []

    def fail(name, data_dir):
        calls.append((name, data_dir))
        return "URLError: no network"

    monkeypatch.setattr(mnist_module, "_download", fail)
    d = load_dataset("mnist", "auto", str(tmp_path), download=True)
    assert calls == [("mnist", str(tmp_path))]
    assert d.source == "bundled"
    assert "no network" in d.note
    with pytest.raises(DataError, match=r"download.*failed.*no network"):
        load_dataset("mnist", "full", str(tmp_path), download=True)


def test_download_that_succeeds_is_used(tmp_path, monkeypatch):
    def fake_download(name, data_dir):
        make_set(Path(data_dir) / "MNIST" / "raw", gz=True)
        return ""

    monkeypatch.setattr(mnist_module, "_download", fake_download)
    d = load_dataset("mnist", "full", str(tmp_path), download=True, val_size=10)
    assert d.source == "full"
    assert d.train.shape == (50, 784)


def test_no_download_attempt_when_files_present(full_mnist, monkeypatch):
    data_dir, _ = full_mnist
    monkeypatch.setattr(mnist_module, "_download", lambda *a: pytest.fail("download attempted"))
    assert load_dataset("mnist", data_dir=str(data_dir), download=True, val_size=5).source == "full"


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_full_missing_raises(tmp_path, name):
    with pytest.raises(DataError) as info:
        load_dataset(name, "full", str(tmp_path / "nowhere"))
    msg = str(info.value)
    assert "not found" in msg
    assert str(tmp_path / "nowhere") in msg
    assert "\n" not in msg
    assert ("dataset.source=bundled" in msg) == (name == "mnist")


def test_fashion_auto_missing_raises(tmp_path):
    with pytest.raises(DataError, match="Fashion-MNIST files not found"):
        load_dataset("fashion_mnist", "auto", str(tmp_path))


def test_no_bundled_fashion(tmp_path):
    with pytest.raises(DataError, match="no bundled subset"):
        load_dataset("fashion_mnist", "bundled", str(tmp_path))


@pytest.mark.parametrize(("name", "source"), [("cifar10", "auto"), ("mnist", "web")])
def test_unknown_name_or_source(name, source):
    with pytest.raises(DataError, match="unknown"):
        load_dataset(name, source)


def test_incomplete_directory_raises(tmp_path):
    make_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"incomplete \(missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", "auto", str(tmp_path))


def test_corrupt_file_is_named(tmp_path):
    make_set(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset("mnist", "auto", str(tmp_path), val_size=5)


def test_label_count_mismatch(tmp_path):
    make_set(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 1, dtype=np.uint8))
    with pytest.raises(DataError, match="labels for 60 images"):
        load_dataset("mnist", "full", str(tmp_path), val_size=5)


def test_wrong_image_size(tmp_path):
    make_set(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((N_TEST, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match="not 28x28"):
        load_dataset("mnist", "full", str(tmp_path), val_size=5)


def test_bundled_subset_is_real_mnist(tmp_path):
    d = load_dataset("mnist", "bundled", str(tmp_path), val_size=123, split_seed=9)
    assert d.source == "bundled"
    assert d.note == ""
    assert d.image_shape == (1, 28, 28)
    assert Path(d.location).name == "mnist_bundled.npz"
    sizes = {"train": 4000, "val": 500, "test": 500}
    for split, n in sizes.items():
        x, y = getattr(d, split), getattr(d, f"{split}_labels")
        assert x.shape == (n, 784)
        assert x.dtype == torch.float32
        assert y.shape == (n,)
        assert x.min() >= 0.0
        assert x.max() == 1.0
        # grey levels are k/255
        assert torch.allclose(x * 255, (x * 255).round(), atol=1e-4)
        # MNIST's mean intensity is about 0.13; every digit has ink and a blank border
        assert 0.11 < x.mean() < 0.15
        assert (x.sum(1) > 20).all()
        assert x.view(n, 28, 28)[:, 0, :].max() == 0
        # stratified: every class, equally often
        assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), n // 10))
    # the three splits hold different digits
    rows = {tuple(r) for r in torch.cat([d.train, d.val, d.test]).mul(255).round().byte().tolist()}
    assert len(rows) == 5000
    # val_size/split_seed do not apply: the split is fixed
    again = load_dataset("mnist", "bundled", val_size=10, split_seed=0)
    assert torch.equal(again.val, d.val)
    assert torch.equal(again.train, d.train)


def test_bundled_file_is_small():
    path = Path(mnist_module.__file__).with_name(mnist_module.BUNDLED_FILE)
    assert path.stat().st_size <= 1.5e6
