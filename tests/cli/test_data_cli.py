"""`nfvi data list | import | fetch` and a short training run on Frey Faces, through the CLI."""

from __future__ import annotations

import json
import os

import pytest

from tests.cli.test_cli import TINY, assert_one_line_error, nfvi, run_dirs
from tests.data.test_frey import write_frey


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ, NFVI_OUTPUT_ROOT=str(tmp_path / "outputs"),
             NFVI_DATA_DIR=str(tmp_path / "data"))
    for k in ("NFVI_DEBUG", "HYDRA_FULL_ERROR"):
        e.pop(k, None)
    # no network: any proxy that might let a download through points nowhere
    e.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
             HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    return e


def test_import_list_and_train_on_frey_faces(tmp_path, env):
    src = tmp_path / "elsewhere" / "frey_rawface.mat"
    write_frey(src)
    listed = nfvi("data", "list", env=env)
    assert listed.returncode == 0 and "frey_faces           missing" in listed.stdout
    imp = nfvi("data", "import", "frey_faces", str(src), env=env)
    assert imp.returncode == 0, imp.stderr
    stored = tmp_path / "data" / "frey_faces" / "frey_rawface.mat"
    assert stored.read_bytes() == src.read_bytes()
    assert stored.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # follows the umask
    assert "frey_rawface.mat" in (tmp_path / "data" / "checksums.json").read_text()
    assert "frey_faces           present" in nfvi("data", "list", env=env).stdout

    args = [a for a in TINY if not a.startswith("trainer.max_steps")]
    proc = nfvi("train", "dataset=frey_faces", *args, "trainer.max_steps=20", env=env)
    assert proc.returncode == 0, proc.stderr
    (run,) = run_dirs(tmp_path / "outputs")
    s = json.loads((run / "summary.json").read_text())
    assert s["steps"] == 20 and s["dataset"] == "frey_faces"
    assert s["test_nll_bpd"] == pytest.approx(s["test_nll"] / (560 * 0.6931471805599453))
    assert s["test_neg_elbo_bpd"] == pytest.approx(
        s["test_neg_elbo"] / (560 * 0.6931471805599453))
    assert 0 < s["test_nll_bpd"] <= 8.5  # about 8 bits/dim for the random test images


def test_fetch_offline_is_one_line_naming_the_url_and_import(env, tmp_path):
    proc = nfvi("data", "fetch", "frey_faces", env=env, timeout=120)
    assert_one_line_error(proc, "https://cs.nyu.edu/~roweis/data/frey_rawface.mat",
                          "nfvi data import frey_faces PATH")
    leftovers = list((tmp_path / "data").glob("*")) if (tmp_path / "data").exists() else []
    assert leftovers == []  # no partial download left behind


def test_import_of_a_corrupt_file_is_one_line_and_stores_nothing(env, tmp_path):
    bad = tmp_path / "frey_rawface.mat"
    bad.write_bytes(os.urandom(3000))
    proc = nfvi("data", "import", "frey_faces", str(bad), env=env)
    assert_one_line_error(proc, str(bad), "frey_rawface.mat")
    assert not (tmp_path / "data" / "frey_faces" / "frey_rawface.mat").exists()


def test_a_changed_stored_file_is_one_line_naming_it(env, tmp_path):
    stored = tmp_path / "data" / "frey_faces" / "frey_rawface.mat"
    write_frey(tmp_path / "src.mat")
    assert nfvi("data", "import", "frey_faces", str(tmp_path / "src.mat"), env=env).returncode == 0
    write_frey(stored, seed=3)  # replaced behind nfvi's back
    proc = nfvi("train", "dataset=frey_faces", *TINY, env=env)
    assert_one_line_error(proc, str(stored), "changed since it was verified")


def test_bernoulli_on_grey_levels_is_a_config_error(env):
    proc = nfvi("train", "dataset=frey_faces", "dataset.likelihood=bernoulli", *TINY, env=env)
    assert_one_line_error(proc, "dataset.likelihood=bernoulli", "dataset.binarize")
