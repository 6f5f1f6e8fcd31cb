"""Optional experiment loggers beside ``metrics.jsonl`` (which stays the source of truth).

``logger=tensorboard`` mirrors every metrics record as scalars (``<split>/<metric>``) and the
run's figures as images into ``<run>/tensorboard/``.
"""

from __future__ import annotations

from pathlib import Path

from nfvi.errors import ConfigError


class NullLogger:
    def write(self, record: dict) -> None:
        pass

    def image(self, tag: str, path: Path, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NullLogger):
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "logger=tensorboard needs the tensorboard package; "
                "pip install 'nfvi[tensorboard]' (or use logger=none)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        split, step = record.get("split", "train"), record["step"]
        for key, value in record.items():
            if key not in ("step", "split", "epoch") and isinstance(value, int | float):
                self.writer.add_scalar(f"{split}/{key}", value, step)
        self.writer.flush()

    def image(self, tag: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image  # matplotlib's dependency; torchvision's decoders are deprecated

        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"))  # figures are RGBA: drop the alpha
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


LOGGERS = {"none": lambda run_dir: NullLogger(), "tensorboard": TensorBoardLogger}


def make_logger(name: str, run_dir: Path) -> NullLogger:
    if name not in LOGGERS:
        raise ConfigError(f"unknown logger {name!r}; use logger=none or logger=tensorboard")
    return LOGGERS[name](run_dir)
