"""nfvi.rundir: atomic files, the run marker, checkpoint lookup, metrics.jsonl and summary.json."""

import json
import os
from pathlib import Path

import pytest

from nfvi import rundir
from nfvi.errors import CheckpointError, ConfigError
from nfvi.rundir import (
    BEST,
    LAST,
    RUN_MARKER,
    SUMMARY_SCHEMA,
    MetricsLog,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    claim,
    is_run_dir,
    read_metrics,
    read_summary,
    release,
    resolve_checkpoint,
    run_dir_of,
    summary_record,
    write_summary,
)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic files ---------------------------------------------------------------------------
def test_atomic_write_bytes_content_and_no_tmp(tmp_path):
    target = tmp_path / "sub" / "blob.bin"  # the parent folder is created
    atomic_write_bytes(target, b"\x00\x01abc")
    assert target.read_bytes() == b"\x00\x01abc"
    assert _leftovers(target.parent) == []


def test_atomic_write_text_is_utf8_and_replaces(tmp_path):
    target = tmp_path / "t.txt"
    atomic_write_text(target, "old")
    atomic_write_text(target, "énergie\n")
    assert target.read_bytes() == "énergie\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_atomic_write_json_content(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1, "b": [1.5, None]})
    text = target.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == {"a": 1, "b": [1.5, None]}
    assert _leftovers(tmp_path) == []


def test_atomic_write_failure_keeps_old_file_and_removes_tmp(tmp_path):
    target = tmp_path / "keep.txt"
    atomic_write_text(target, "old content")

    def writer(f):
        f.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, writer)
    assert target.read_text(encoding="utf-8") == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_atomic_write_failure_without_old_file_leaves_nothing(tmp_path):
    target = tmp_path / "new.txt"

    def writer(f):
        raise KeyboardInterrupt  # a BaseException too

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, writer)
    assert list(tmp_path.iterdir()) == []


# -- claiming a directory ---------------------------------------------------------------------
def test_claim_creates_marker(tmp_path):
    run = tmp_path / "a" / "run"
    claim(run)
    marker = run / RUN_MARKER
    assert marker.is_file()
    assert marker.read_text().startswith("pid ")
    assert is_run_dir(run)


def test_second_claim_refused(tmp_path):
    claim(tmp_path)
    before = (tmp_path / RUN_MARKER).read_text()
    with pytest.raises(ConfigError, match="already holds a run") as info:
        claim(tmp_path)
    assert str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)
    assert (tmp_path / RUN_MARKER).read_text() == before


def test_claim_resuming_requires_marker(tmp_path):
    with pytest.raises(ConfigError, match="not an nfvi run directory"):
        claim(tmp_path, resuming=True)
    assert not (tmp_path / RUN_MARKER).exists()


def test_claim_resuming_accepts_claimed_dir(tmp_path):
    claim(tmp_path)
    before = (tmp_path / RUN_MARKER).read_text()
    claim(tmp_path, resuming=True)  # no error, marker untouched
    assert (tmp_path / RUN_MARKER).read_text() == before


def test_release_then_claim_again(tmp_path):
    claim(tmp_path)
    release(tmp_path)
    assert not (tmp_path / RUN_MARKER).exists()
    assert not is_run_dir(tmp_path)
    release(tmp_path)  # releasing twice is fine
    claim(tmp_path)
    assert (tmp_path / RUN_MARKER).is_file()


def test_is_run_dir(tmp_path):
    assert not is_run_dir(tmp_path)
    (tmp_path / RUN_MARKER).write_text("x")
    assert is_run_dir(tmp_path)
    (tmp_path / "eval.json").write_text("{}")
    assert not is_run_dir(tmp_path)  # an evaluation directory is not a run


def test_is_run_dir_marker_must_be_file(tmp_path):
    (tmp_path / RUN_MARKER).mkdir()
    assert not is_run_dir(tmp_path)


# -- checkpoints ----------------------------------------------------------------------------
def _ckpt(run: Path, name: str) -> Path:
    p = run / "checkpoints" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"ckpt " + name.encode())
    return p


def test_resolve_dir_prefers_best(tmp_path):
    _ckpt(tmp_path, LAST)
    best = _ckpt(tmp_path, BEST)
    assert resolve_checkpoint(tmp_path) == best.resolve()


def test_resolve_dir_falls_back_to_last(tmp_path):
    last = _ckpt(tmp_path, LAST)
    assert resolve_checkpoint(tmp_path) == last.resolve()


def test_resolve_dir_prefer_last(tmp_path):
    last = _ckpt(tmp_path, LAST)
    best = _ckpt(tmp_path, BEST)
    assert resolve_checkpoint(tmp_path, prefer=LAST) == last.resolve()
    last.unlink()
    assert resolve_checkpoint(tmp_path, prefer=LAST) == best.resolve()


def test_resolve_file_returned_as_is(tmp_path):
    f = tmp_path / "elsewhere.pt"
    f.write_bytes(b"x")
    assert resolve_checkpoint(f) == f.resolve()
    assert resolve_checkpoint(str(f)) == f.resolve()


def test_resolve_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        resolve_checkpoint(missing)
    msg = str(info.value)
    assert str(missing) in msg
    assert "\n" not in msg


def test_resolve_dir_without_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in") as info:
        resolve_checkpoint(tmp_path)
    msg = str(info.value)
    assert "checkpoints/best.pt and last.pt" in msg
    assert "\n" not in msg


def test_run_dir_of(tmp_path):
    assert run_dir_of(tmp_path / "run" / "checkpoints" / "best.pt") == tmp_path / "run"
    assert run_dir_of(tmp_path / "run" / "model.pt") == tmp_path / "run"


# -- metrics --------------------------------------------------------------------------------
def test_read_metrics_missing_file(tmp_path):
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_read_metrics_skips_torn_and_blank_lines(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text(
        '{"step": 1, "loss": 2.0}\n\n   \n[1, 2]\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo'
    )
    assert read_metrics(p) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]


def test_metrics_log_write_appends(tmp_path):
    log = MetricsLog(tmp_path)
    assert log.path == tmp_path / "metrics.jsonl"
    log.write({"step": 1, "loss": 3.0})
    log.write({"step": 2, "loss": 2.0, "split": "val"})
    lines = log.path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(ln) for ln in lines] == [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.0, "split": "val"},
    ]


def test_truncate_after_drops_later_records_and_torn_line(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (10, 20, 30, 40):
        log.write({"step": step, "loss": float(step)})
    with log.path.open("a", encoding="utf-8") as f:
        f.write('{"step": 50, "lo')  # killed mid-append
    dropped = log.truncate_after(20)
    assert dropped == 3  # steps 30, 40 and the torn line
    text = log.path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    assert [json.loads(ln) for ln in text.splitlines()] == [
        {"step": 10, "loss": 10.0},
        {"step": 20, "loss": 20.0},
    ]
    assert _leftovers(tmp_path) == []
    log.write({"step": 30, "loss": 1.0})  # appending afterwards gives valid JSONL
    assert [r["step"] for r in read_metrics(log.path)] == [10, 20, 30]


def test_truncate_after_keeps_everything_up_to_step(tmp_path):
    log = MetricsLog(tmp_path)
    log.write({"step": 5})
    log.write({"note": "no step"})  # a record without a step counts as step 0
    assert log.truncate_after(5) == 0
    assert read_metrics(log.path) == [{"step": 5}, {"note": "no step"}]


def test_truncate_after_missing_file(tmp_path):
    log = MetricsLog(tmp_path)
    assert log.truncate_after(100) == 0
    assert not log.path.exists()


def test_truncate_after_zero_drops_all(tmp_path):
    log = MetricsLog(tmp_path)
    log.write({"step": 1})
    log.write({"step": 2})
    assert log.truncate_after(0) == 2
    assert log.path.read_text(encoding="utf-8") == ""


# -- results --------------------------------------------------------------------------------
def test_summary_record_exact():
    run = {"task": "vae", "flow": "planar", "K": 4, "seed": 0}
    results = {"test_nll": 90.5, "test_elbo": -95.25}
    rec = summary_record(run, results)
    assert rec == {
        "schema": SUMMARY_SCHEMA,
        "task": "vae",
        "flow": "planar",
        "K": 4,
        "seed": 0,
        "test_nll": 90.5,
        "test_elbo": -95.25,
    }
    assert list(rec) == ["schema", "task", "flow", "K", "seed", "test_nll", "test_elbo"]
    assert SUMMARY_SCHEMA == 1
    assert run == {"task": "vae", "flow": "planar", "K": 4, "seed": 0}  # inputs untouched


def test_write_and_read_summary_round_trip(tmp_path):
    rec = summary_record({"task": "energy", "K": 8}, {"kl": 0.125, "ess": [1, 2]})
    path = write_summary(tmp_path, rec)
    assert path == tmp_path / "summary.json"
    assert read_summary(path) == (rec, None)
    other = write_summary(tmp_path, rec, name="eval.json")
    assert other == tmp_path / "eval.json"
    assert read_summary(other) == (rec, None)
    assert _leftovers(tmp_path) == []


def test_read_summary_corrupt_json(tmp_path):
    p = tmp_path / "summary.json"
    p.write_text('{"schema": 1, "K": ')
    data, problem = read_summary(p)
    assert data is None
    assert problem.startswith("corrupt summary.json (")
    assert "line 1" in problem


def test_read_summary_not_an_object(tmp_path):
    p = tmp_path / "eval.json"
    p.write_text("[1, 2, 3]")
    assert read_summary(p) == (None, "corrupt eval.json (not an object)")


def test_read_summary_missing(tmp_path):
    data, problem = read_summary(tmp_path / "summary.json")
    assert data is None
    assert problem.startswith("unreadable summary.json (")


def test_read_summary_binary_garbage(tmp_path):
    p = tmp_path / "summary.json"
    p.write_bytes(b"\xff\xfe\x00garbage")
    data, problem = read_summary(p)
    assert data is None
    assert "summary.json" in problem


def test_write_config(tmp_path):
    rundir.write_config(tmp_path, "K: 3\n")
    assert (tmp_path / "config.yaml").read_text(encoding="utf-8") == "K: 3\n"


# -- a full disk and file modes (issue: faults and hostile input) ------------------------------
def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    import errno

    from nfvi.rundir import DiskFull

    target = tmp_path / "summary.json"
    rundir.atomic_write_text(target, "old")

    def no_space(fd):  # the kernel's answer when the device is full (simulated)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DiskFull, match="no space left on the device holding") as info:
        rundir.atomic_write_text(target, "new")
    assert "\n" not in str(info.value) and "intact" in str(info.value)
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_torch_disk_full_message_is_recognised():
    assert rundir.disk_full(RuntimeError("[enforce fail at inline_container.cc:672] unexpected "
                                         "pos 128 vs 64"))
    assert not rundir.disk_full(RuntimeError("something else"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        rundir.atomic_write_json(tmp_path / "a.json", {"x": 1})
        rundir.MetricsLog(tmp_path).write({"step": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "metrics.jsonl").stat().st_mode & 0o777 == mode


def test_stale_temporaries_are_cleaned(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"x" * 100)
    (tmp_path / ".summary.json.zz.tmp").write_text("{")
    (tmp_path / "keep.tmp").write_text("not ours")
    assert rundir.clean_temporaries(tmp_path) == 2
    assert [p.name for p in tmp_path.rglob("*.tmp")] == ["keep.tmp"]


def test_remove_unstarted_touches_only_what_a_run_wrote(tmp_path):
    root = tmp_path / "outputs"
    run = root / "exp" / "planar_K-1" / "stamp"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("K: -1")
    (run / "nfvi.log").write_text("")
    rundir.remove_unstarted(run, stop_at=root)
    assert root.is_dir() and not any(root.iterdir())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    (mine / "nfvi.log").write_text("")
    rundir.remove_unstarted(mine, stop_at=tmp_path)
    assert (mine / "notes.txt").read_text() == "the user's" and not (mine / "nfvi.log").exists()
