"""Static binarized MNIST: the reader on tiny files in the published .amat layout (one image of
784 space-separated 0/1 values per line), the published split, the checks, the checksums, and
the catalog's multi-file import and fetch."""

from __future__ import annotations

import io
import urllib.error

import numpy as np
import pytest

from nfvi.data import catalog, load_dataset, static_mnist
from nfvi.data.static_mnist import FILES, read_amat
from nfvi.data.store import RECORD
from nfvi.errors import DataError

TINY_COUNTS = {"train": 6, "val": 3, "test": 2}


def amat_text(images: np.ndarray) -> str:
    """Images uint8 [N, 28, 28] in {0, 1} as .amat lines (row-major, space-separated)."""
    return "".join(" ".join(map(str, im.reshape(-1))) + "\n" for im in images)


def write_static(directory, counts=None, seed=0) -> dict[str, np.ndarray]:
    """The three files in ``directory``; image k of each split has pixel (0, 5) set and
    (5, 0) clear, so a transposed reader would show."""
    counts = counts or TINY_COUNTS
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in counts.items():
        images = (rng.random((n, 28, 28)) < 0.3).astype(np.uint8)
        images[:, 0, 5], images[:, 5, 0] = 1, 0
        (directory / FILES[split]).write_text(amat_text(images))
        out[split] = images
    return out


@pytest.fixture
def tiny(monkeypatch):
    """The published layout, with a few images per file instead of 50k / 10k / 10k."""
    monkeypatch.setattr(static_mnist, "COUNTS", dict(TINY_COUNTS))


def test_the_published_split_is_50k_10k_10k():
    assert static_mnist.COUNTS == {"train": 50000, "val": 10000, "test": 10000}
    assert FILES == {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat",
                     "test": "binarized_mnist_test.amat"}


def test_files_load_upright_as_the_published_split(tmp_path, tiny):
    images = write_static(tmp_path / "static_mnist")
    d = load_dataset("static_mnist", data_dir=str(tmp_path))
    assert (len(d.train), len(d.val), len(d.test)) == (6, 3, 2)
    assert d.image_shape == (1, 28, 28) and d.train.dtype.is_floating_point
    for split, x in (("train", d.train), ("val", d.val), ("test", d.test)):
        assert x.shape[1] == 784 and set(x.unique().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(x.numpy().reshape(-1, 28, 28), images[split])  # in order
    assert (d.train.view(-1, 28, 28)[:, 0, 5] == 1).all()
    assert (d.train.view(-1, 28, 28)[:, 5, 0] == 0).all()


def test_files_directly_in_data_dir_and_crlf_lines_are_read(tmp_path, tiny):
    images = write_static(tmp_path)
    p = tmp_path / FILES["test"]
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))
    d = load_dataset("static_mnist", data_dir=str(tmp_path))
    np.testing.assert_array_equal(d.test.numpy().reshape(-1, 28, 28), images["test"])


@pytest.mark.parametrize(("edit", "what"), [
    (lambda s: s.replace("0 ", "2 ", 1), "line 1"),                      # a value not 0/1
    (lambda s: s.replace("0 0 ", "00 ", 1), "line 1"),                   # a merged token
    (lambda s: s.split("\n", 1)[0][:-2] + "\n" + s.split("\n", 1)[1], "line 1"),  # 783 values
    (lambda s: s.split("\n", 1)[1], "holds 5 images, not the published 6"),
    (lambda s: "", "holds 0 images"),
])
def test_a_wrong_file_is_one_line_naming_it_and_the_fix(tmp_path, tiny, edit, what):
    write_static(tmp_path)
    p = tmp_path / FILES["train"]
    p.write_text(edit(p.read_text()))
    with pytest.raises(DataError) as err:
        load_dataset("static_mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(p) in msg and what in msg
    assert "nfvi data fetch static_mnist or nfvi data import static_mnist PATH" in msg
    assert not (tmp_path / RECORD).exists() or FILES["train"] not in (tmp_path / RECORD).read_text()


def test_missing_files_are_named_with_the_fix(tmp_path, tiny):
    write_static(tmp_path)
    (tmp_path / FILES["val"]).unlink()
    with pytest.raises(DataError, match="binarized_mnist_valid.amat not found .*nfvi data fetch "
                                        "static_mnist"):
        load_dataset("static_mnist", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="no bundled subset of static_mnist"):
        load_dataset("static_mnist", "bundled", str(tmp_path))


def test_a_file_changed_after_verification_is_an_error(tmp_path, tiny):
    write_static(tmp_path)
    load_dataset("static_mnist", data_dir=str(tmp_path))
    assert FILES["test"] in (tmp_path / RECORD).read_text()
    write_static(tmp_path, seed=1)  # equally well-formed, different
    with pytest.raises(DataError, match="changed since it was verified"):
        load_dataset("static_mnist", data_dir=str(tmp_path))


def test_import_of_a_directory_or_of_files_by_name(tmp_path, tiny):
    images = write_static(tmp_path / "src")
    data = tmp_path / "data"
    stored = catalog.import_file("static_mnist", tmp_path / "src", data)
    assert stored == data / "static_mnist" and static_mnist.find_dir(data) == stored
    np.testing.assert_array_equal(
        read_amat(stored / FILES["val"], "val").reshape(-1, 28, 28), images["val"])
    record = (data / RECORD).read_text()
    assert all(f in record for f in FILES.values())
    # one file at a time, under its published name
    other = tmp_path / "other"
    catalog.import_file("static_mnist", [tmp_path / "src" / FILES["test"]], other)
    assert (other / "static_mnist" / FILES["test"]).is_file()
    assert static_mnist.find_dir(other) is None  # still two missing


def test_import_stores_nothing_unless_every_file_passes(tmp_path, tiny):
    write_static(tmp_path / "src")
    (tmp_path / "src" / FILES["test"]).write_text("1 0 1\n")
    with pytest.raises(DataError, match=FILES["test"]):
        catalog.import_file("static_mnist", tmp_path / "src", tmp_path / "data")
    assert not (tmp_path / "data" / "static_mnist").exists()
    (tmp_path / "src" / FILES["val"]).unlink()
    with pytest.raises(DataError, match="lacks binarized_mnist_valid.amat"):
        catalog.import_file("static_mnist", tmp_path / "src", tmp_path / "data")
    renamed = tmp_path / "train.amat"
    renamed.write_bytes((tmp_path / "src" / FILES["train"]).read_bytes())
    with pytest.raises(DataError, match="not one of static_mnist's files"):
        catalog.import_file("static_mnist", renamed, tmp_path / "data")


def test_fetch_downloads_all_three_files(tmp_path, tiny, monkeypatch):
    images = write_static(tmp_path / "served")
    served = {static_mnist.url(s): (tmp_path / "served" / f).read_bytes() for s, f in FILES.items()}
    monkeypatch.setattr(catalog.urllib.request, "urlopen",
                        lambda url, timeout: io.BytesIO(served[url]))
    stored = catalog.fetch("static_mnist", tmp_path / "data")
    assert sorted(p.name for p in stored.iterdir()) == sorted(FILES.values())
    d = load_dataset("static_mnist", data_dir=str(tmp_path / "data"))
    np.testing.assert_array_equal(d.test.numpy().reshape(-1, 28, 28), images["test"])
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".")] == []


def test_fetch_offline_names_the_url_and_leaves_nothing(tmp_path, monkeypatch):
    def refuse(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(catalog.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="could not download http://www.cs.toronto.edu/~larocheh/"
                                        ".*nfvi data import static_mnist PATH"):
        catalog.fetch("static_mnist", tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_a_fetch_failing_halfway_stores_nothing(tmp_path, tiny, monkeypatch):
    write_static(tmp_path / "served")
    train = (tmp_path / "served" / FILES["train"]).read_bytes()

    def urlopen(url, timeout):
        if url != static_mnist.url("train"):
            raise urllib.error.URLError("connection reset")
        return io.BytesIO(train)

    monkeypatch.setattr(catalog.urllib.request, "urlopen", urlopen)
    with pytest.raises(DataError, match="could not download .*binarized_mnist_valid.amat"):
        catalog.fetch("static_mnist", tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []
