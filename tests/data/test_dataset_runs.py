"""The file datasets through the real CLI (the ``nfvi`` Typer app, in this process via
Typer's runner: a new process would spend most of the 10 s budget importing torch): a 20-step
training run on each with each model (tiny files in the published formats),
``nfvi data import | list`` for the multi-file static MNIST, and ``nfvi data fetch`` offline.

The published files hold 8k-70k images; the tiny fixtures differ from them only in the counts,
so each test first sets the module constants that hold the published counts.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import urllib.error
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from nfvi.cli import app
from nfvi.data import catalog
from tests.cli.test_cli import TINY, assert_one_line_error, run_dirs
from tests.data.test_caltech_silhouettes import write_caltech
from tests.data.test_cifar10_patches import write_cifar
from tests.data.test_frey import write_frey
from tests.data.test_omniglot import write_chardata
from tests.data.test_static_mnist import write_static

COUNTS = {
    "static_mnist": {"static_mnist": {"COUNTS": {"train": 40, "val": 10, "test": 10}}},
    "omniglot": {"omniglot": {"SHAPES": {"data": (784, 50), "testdata": (784, 10)},
                              "N_VAL": 10}},
    "caltech_silhouettes": {"caltech": {"COUNTS": {"train": 40, "val": 10, "test": 10}}},
    "cifar10_patches": {"cifar_patches": {"RECORDS": 10}},
    "frey_faces": {},  # the real size (1,965 frames of 560 bytes) is small enough
}


def write_tiny(name: str, data_dir) -> None:
    """``name``'s files in ``data_dir/<name>/``, with the counts of :data:`COUNTS`."""
    folder = data_dir / name
    if name == "static_mnist":
        write_static(folder, COUNTS[name]["static_mnist"]["COUNTS"])
    elif name == "omniglot":
        write_chardata(folder / "chardata.mat", n_train=50, n_test=10)
    elif name == "caltech_silhouettes":
        write_caltech(folder / "caltech101_silhouettes_28_split1.mat",
                      COUNTS[name]["caltech"]["COUNTS"])
    elif name == "frey_faces":
        folder.mkdir(parents=True)
        write_frey(folder / "frey_rawface.mat")
    else:
        write_cifar(folder / "cifar-10-binary.tar.gz", records=10)


@pytest.fixture
def tiny_counts(monkeypatch):
    """``tiny_counts(name)``: set ``name``'s published counts to those of :data:`COUNTS`."""
    def apply(name: str) -> None:
        for mod, attrs in COUNTS[name].items():
            module = importlib.import_module(f"nfvi.data.{mod}")
            for key, value in attrs.items():
                monkeypatch.setattr(module, key, value)

    return apply


def nfvi(*args: str):
    """``nfvi ARGS`` through the Typer app; the result as a process (returncode, out, err)."""
    r = CliRunner().invoke(app, list(args))
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("NFVI_OUTPUT_ROOT", str(tmp_path / "outputs"))
    monkeypatch.setenv("NFVI_DATA_DIR", str(tmp_path / "data"))
    for k in ("NFVI_DEBUG", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("model", ["mlp", "gated_conv"])
@pytest.mark.parametrize("name", list(COUNTS))
def test_twenty_training_steps_through_the_cli(tmp_path, env, tiny_counts, name, model):
    tiny_counts(name)
    data = tmp_path / "elsewhere"
    write_tiny(name, data)
    args = [a for a in TINY if not a.startswith(("trainer.max_steps", "eval.max_examples"))]
    proc = nfvi("train", f"dataset={name}", f"dataset.data_dir={data}", f"model={model}",
                *args, "trainer.max_steps=20", "trainer.batch_size=20", "eval.max_examples=10",
                "eval.batch_size=10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    s = json.loads((run / "summary.json").read_text())
    assert s["steps"] == 20 and s["dataset"] == name and s["test_examples"] == 10
    assert f"name: {model}" in (run / "config.yaml").read_text()
    assert math.isfinite(s["test_nll"]) and math.isfinite(s["test_neg_elbo"])
    if name != "cifar10_patches":  # binary pixels: a probability, so a positive NLL
        assert s["test_nll"] > 0
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    assert (data / "checksums.json").is_file()  # verified and recorded on first use


def test_import_a_directory_then_list_shows_it_present(tmp_path, env, tiny_counts):
    tiny_counts("static_mnist")
    src = tmp_path / "downloads"
    write_tiny("static_mnist", src)
    listed = nfvi("data", "list")
    assert listed.returncode == 0, listed.stderr
    for name in COUNTS:
        assert any(ln.startswith(name) and " missing " in ln for ln in listed.stdout.splitlines())
    imp = nfvi("data", "import", "static_mnist", str(src / "static_mnist"))
    assert imp.returncode == 0, imp.stderr
    assert f"stored {tmp_path / 'data' / 'static_mnist'}" in imp.stdout
    listed = nfvi("data", "list").stdout
    assert any(ln.startswith("static_mnist") and " present " in ln for ln in listed.splitlines())


def test_import_takes_the_three_files_by_name(tmp_path, env, tiny_counts):
    tiny_counts("static_mnist")
    src = tmp_path / "downloads"
    write_tiny("static_mnist", src)
    files = sorted(str(p) for p in (src / "static_mnist").glob("*.amat"))
    assert len(files) == 3
    imp = nfvi("data", "import", "static_mnist", *files)
    assert imp.returncode == 0, imp.stderr
    assert sorted(p.name for p in (tmp_path / "data" / "static_mnist").glob("*.amat")) == [
        "binarized_mnist_test.amat", "binarized_mnist_train.amat", "binarized_mnist_valid.amat"]


def test_import_of_a_wrong_file_is_one_line(tmp_path, env):
    bad = tmp_path / "chardata.mat"
    bad.write_bytes(os.urandom(2000))
    proc = nfvi("data", "import", "omniglot", str(bad))
    assert_one_line_error(proc, str(bad), "nfvi data import omniglot PATH")
    assert not (tmp_path / "data" / "omniglot").exists()


@pytest.mark.parametrize(("name", "url"), [
    ("static_mnist", "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
                     "binarized_mnist_train.amat"),
    ("cifar10_patches", "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"),
])
def test_fetch_offline_is_one_line_naming_the_url_and_import(tmp_path, env, monkeypatch, name,
                                                             url):
    def offline(address, timeout):  # urllib caches its opener: proxies set now may not apply
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(catalog.urllib.request, "urlopen", offline)
    proc = nfvi("data", "fetch", name)
    assert_one_line_error(proc, url, f"nfvi data import {name} PATH")
    data = tmp_path / "data"
    assert not data.exists() or list(data.iterdir()) == []  # nothing half-downloaded
