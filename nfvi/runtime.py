"""Devices, seeds, threads, RNG states, and the seeded evaluation context."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from nfvi.errors import DeviceError


def resolve_device(spec: str) -> torch.device:
    """``auto|cpu|cuda|cuda:N|mps`` -> a usable device, or a one-line :class:`DeviceError`.

    ``auto`` picks CUDA when present, else CPU (MPS only when asked for: some ops are missing).
    """
    spec = str(spec)
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", spec):
        raise DeviceError(f"unknown device {spec!r}; use device=auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device={spec} was asked for but no CUDA device is available here; "
                "use device=cpu (or device=auto)"
            )
        dev = torch.device(spec)
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise DeviceError(
                f"device={spec} does not exist (this machine has {n} CUDA device(s): "
                f"cuda:0..cuda:{n - 1}); pick one of those or device=auto"
            )
        return dev
    if not torch.backends.mps.is_available():  # spec == "mps"
        raise DeviceError("device=mps was asked for but MPS is not available; use device=cpu")
    return torch.device("mps")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_threads(n: int | None) -> None:
    """Limit torch's intra-op threads (parallel sweeps: jobs x threads <= cores)."""
    if n is not None and n > 0:
        torch.set_num_threads(n)


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(trim_bytes: int = 1 << 30, mmap_bytes: int = 32 << 20) -> bool:
    """Let glibc's malloc keep the memory freed tensors give back, for the next step's tensors.

    By default glibc serves each allocation above 128 KiB with a fresh ``mmap`` and returns it
    to the OS on free, and trims the heap's free top above 128 KiB: a training step that
    allocates and frees the same few MB of activations and gradients every update then takes
    hundreds of page faults per step, each zeroing a fresh page (the default model on a CPU:
    about 600 minor faults and 1.6 ms of system time per K = 0 step;
    ``benchmarks/bench_fused.py`` prints the faults per step). Raising the trim threshold to
    ``trim_bytes`` and the mmap threshold to ``mmap_bytes`` (glibc's largest dynamic value)
    keeps that memory in the process: the resident size stays at its peak instead of
    breathing. Returns whether it applied (glibc only; elsewhere a no-op, False)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_bytes) == 1
                and mallopt(_M_MMAP_THRESHOLD, mmap_bytes) == 1)


def rng_state() -> dict:
    """Python, torch CPU and CUDA RNG states, as checkpoint-safe plain objects."""
    state: dict = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    if "python" in state:
        random.setstate(_as_python_state(state["python"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda = [s.cpu() for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _as_python_state(s):
    # weights_only loading gives lists back where random.getstate() had tuples
    version, internal, gauss = s
    return (version, tuple(internal), gauss)


@contextmanager
def seeded_eval(model: torch.nn.Module, device: torch.device, seed: int) -> Iterator[None]:
    """Eval mode, no_grad and a forked RNG seeded with ``seed``: repeatable, and the caller's
    RNG and training mode are untouched."""
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)
