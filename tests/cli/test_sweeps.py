"""Sweeps through Hydra's launchers, stored sweeps and the cluster configuration."""

from __future__ import annotations

import os
import re
import signal

from nfvi.training import SignalFlag
from tests.cli.test_cli import TINY, nfvi, run_dirs

FAST = [a for a in TINY if not a.startswith(("trainer.num_threads", "K="))]
FAST += ["trainer.max_steps=10", "eval.iw_samples=5", "eval.max_examples=20"]


def threads_used(run) -> int:
    m = re.search(r"torch threads (\d+)", (run / "nfvi.log").read_text())
    assert m, "the log names the thread count"
    return int(m.group(1))


def test_joblib_sweep_runs_four_jobs_in_four_directories(env, tmp_path):
    proc = nfvi("train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                *FAST, "K=0,1", "seed=0,1", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = run_dirs(tmp_path / "outputs")
    assert len(runs) == 4 and len(set(runs)) == 4
    assert all((r / "summary.json").is_file() for r in runs)
    # 2 jobs side by side: each gets cores // 2 threads, so jobs x threads <= cores
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert {threads_used(r) for r in runs} == {expected}


def test_submitit_local_sweep(env, tmp_path):
    proc = nfvi("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.gpus_per_node=0", *FAST, "K=0,1", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = run_dirs(tmp_path / "outputs")
    assert len(runs) == 2 and all((r / "summary.json").is_file() for r in runs)
    assert {threads_used(r) for r in runs} == {1}


def test_slurm_launcher_configuration_composes(env):
    proc = nfvi("train", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                "hydra.launcher.timeout_min=600", "hydra.launcher.mem_gb=32", "--cfg", "hydra",
                env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "SlurmLauncher" in out and "partition: gpu" in out and "mem_gb: 32" in out
    assert "timeout_min: 600" in out
    assert "gpus_per_node: 1" in out  # one GPU per job
    assert re.search(r"max_num_timeout: [1-9]", out)  # time-outs are requeued


def test_stored_flow_length_sweep_is_the_papers_grid(env):
    proc = nfvi("train", "+sweep=flow_length", "--cfg", "hydra", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "K: 0,10,20,40,80" in proc.stdout
    assert "flow: planar,nice" in proc.stdout


def test_signal_flag_hands_cluster_signals_on_after_saving():
    seen = []
    old = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        with SignalFlag() as flag:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert flag.signum == signal.SIGUSR2 and seen == []  # ours ran, not theirs
            flag.chain()
        assert seen == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is not None  # restored on exit
    finally:
        signal.signal(signal.SIGUSR2, old)
