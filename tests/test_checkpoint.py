"""nfvi.checkpoint: atomic save, weights-only load, one-line CheckpointError for a bad file."""

import os
import pickle

import pytest
import torch

from nfvi.checkpoint import load_checkpoint, save_checkpoint
from nfvi.errors import CheckpointError


def _payload() -> dict:
    return {
        "model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)},
        "config": {"K": 4, "flow": {"name": "planar", "hparams": {}}, "device": "cpu"},
        "step": 120,
        "best": -91.5,
        "history": [1, 2.5, None, "x"],
        "rng": torch.get_rng_state(),
    }


def _one_line_error(path, match: str) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


def test_round_trip(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"  # the folder is created
    payload = _payload()
    save_checkpoint(path, payload)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temporary left
    obj = load_checkpoint(path)
    assert set(obj) == set(payload)
    assert torch.equal(obj["model"]["w"], payload["model"]["w"])
    assert obj["model"]["w"].dtype == torch.float32
    assert torch.equal(obj["model"]["b"], torch.zeros(3))
    assert torch.equal(obj["rng"], payload["rng"])
    assert obj["config"] == {"K": 4, "flow": {"name": "planar", "hparams": {}}, "device": "cpu"}
    assert obj["step"] == 120
    assert obj["best"] == -91.5
    assert obj["history"] == [1, 2.5, None, "x"]


def test_round_trip_loads_with_weights_only(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(str(path), _payload())  # str paths work too
    # what load_checkpoint accepted must also load under the restricted unpickler directly
    obj = torch.load(path, weights_only=True)
    assert obj["step"] == 120


def test_missing_file(tmp_path):
    msg = _one_line_error(tmp_path / "none.pt", "does not exist")
    assert "checkpoints/best.pt" in msg


def test_directory_is_not_a_file(tmp_path):
    _one_line_error(tmp_path, "does not exist")


def test_random_bytes(tmp_path):  # no PyTorch notice, no message cut in the middle
    path = tmp_path / "junk.pt"
    path.write_bytes(bytes(range(256)) * 8)
    _one_line_error(path, "is not a checkpoint file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    _one_line_error(path, "is not a checkpoint file")


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _payload())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _one_line_error(path, "is damaged")


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2, 3],
        torch.ones(2),
        {"model": {}},  # no config
        {"config": {}},  # no model
        {"state": 1},
    ],
    ids=["list", "tensor", "no-config", "no-model", "other-dict"],
)
def test_valid_torch_file_but_not_a_checkpoint(tmp_path, obj):
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    _one_line_error(path, "is not an nfvi checkpoint")


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_code_running_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": _Evil(str(marker)), "config": {}}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with path.open("wb") as f:
            pickle.dump(payload, f, protocol=2)  # torch.load's legacy format
    # sanity: the file really would run code under an unrestricted load
    assert pickle.loads(pickle.dumps(_Evil(str(tmp_path / "probe")))) == 0
    assert (tmp_path / "probe").exists()
    expected = {"torch": "holds objects nfvi never saves", "pickle": "not a checkpoint file"}
    _one_line_error(path, expected[writer])
    assert not marker.exists()
