"""make_logger: logger=none writes nothing, logger=tensorboard mirrors scalars and images."""

import importlib.util
import io
import sys

import numpy as np
import pytest
from PIL import Image

from nfvi.errors import ConfigError
from nfvi.loggers import NullLogger, TensorBoardLogger, make_logger

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="needs the tensorboard package"
)


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_none_writes_nothing(tmp_path):
    logger = make_logger("none", tmp_path)
    assert isinstance(logger, NullLogger)
    assert not isinstance(logger, TensorBoardLogger)
    logger.write({"step": 1, "split": "train", "loss": 1.0})
    logger.image("figures/x", tmp_path / "missing.png", 1)  # not even read
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_none_does_not_create_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    make_logger("none", run_dir).write({"step": 0, "loss": 2.0})
    assert not run_dir.exists()


@pytest.mark.parametrize("name", ["wandb", "TensorBoard", "", "null"])
def test_unknown_name_raises(tmp_path, name):
    with pytest.raises(ConfigError, match="unknown logger") as info:
        make_logger(name, tmp_path)
    assert repr(name) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_missing_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        make_logger("tensorboard", tmp_path)
    assert list(tmp_path.iterdir()) == []


@needs_tensorboard
def test_tensorboard_scalars_round_trip(tmp_path):
    logger = make_logger("tensorboard", tmp_path)
    assert isinstance(logger, TensorBoardLogger)
    logger.write({"step": 10, "split": "train", "epoch": 1, "loss": 1.5, "elbo": -90.25})
    logger.write({"step": 20, "split": "train", "epoch": 1, "loss": 1.25, "elbo": -89.5})
    logger.write({"step": 20, "split": "val", "elbo": -88.75, "iw_samples": 200, "note": "x"})
    logger.write({"step": 30, "loss": 0.5})  # no split: train
    logger.close()

    log_dir = tmp_path / "tensorboard"
    assert [p.name for p in tmp_path.iterdir()] == ["tensorboard"]
    files = list(log_dir.iterdir())
    assert files and all(p.name.startswith("events.out.tfevents.") for p in files)

    acc = _events(log_dir)
    # step, split and epoch are not scalars; a string value is skipped
    assert set(acc.Tags()["scalars"]) == {"train/loss", "train/elbo", "val/elbo", "val/iw_samples"}
    assert _scalars(acc, "train/loss") == [(10, 1.5), (20, 1.25), (30, 0.5)]
    assert _scalars(acc, "train/elbo") == [(10, -90.25), (20, -89.5)]
    assert _scalars(acc, "val/elbo") == [(20, -88.75)]
    assert _scalars(acc, "val/iw_samples") == [(20, 200.0)]


@needs_tensorboard
def test_tensorboard_write_flushes_before_close(tmp_path):
    logger = make_logger("tensorboard", tmp_path)
    try:
        logger.write({"step": 3, "split": "train", "loss": 0.75})
        assert _scalars(_events(tmp_path / "tensorboard"), "train/loss") == [(3, 0.75)]
    finally:
        logger.close()


@needs_tensorboard
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_tensorboard_image_is_stored(tmp_path, mode):
    rgb = np.array(
        [
            [[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]],
            [[0, 128, 64], [200, 100, 50], [30, 60, 90], [40, 50, 60]],
            [[1, 2, 3], [4, 5, 6], [7, 8, 9], [70, 80, 90]],
        ],
        dtype=np.uint8,
    )  # H=3 x W=4 x RGB
    pixels = rgb if mode == "RGB" else np.dstack([rgb, np.full((3, 4), 255, np.uint8)])
    png = tmp_path / "fig.png"
    Image.fromarray(pixels, mode).save(png)  # an RGBA figure (matplotlib's savefig) -> RGB

    logger = make_logger("tensorboard", tmp_path)
    logger.image("figures/samples", png, 7)
    logger.close()

    images = _events(tmp_path / "tensorboard").Images("figures/samples")
    assert len(images) == 1
    event = images[0]
    assert event.step == 7
    assert (event.width, event.height) == (4, 3)
    stored = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(stored, rgb)
