"""resolve_device, seed_everything, rng_state / set_rng_state and set_threads."""

import random

import pytest
import torch

from nfvi.errors import DeviceError
from nfvi.runtime import resolve_device, rng_state, seed_everything, set_rng_state, set_threads


@pytest.fixture
def no_accelerator(monkeypatch):
    """Pretend this machine has neither CUDA nor MPS (torch is patched, not nfvi)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def keep_rng():
    """Leave the global Python / torch RNGs as this test found them."""
    py, th = random.getstate(), torch.get_rng_state()
    yield
    random.setstate(py)
    torch.set_rng_state(th)


# --- resolve_device -------------------------------------------------------------------------


def test_auto_is_cpu_without_cuda(no_accelerator):
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_is_cpu_on_this_machine():
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_is_cuda_with_cuda():
    assert resolve_device("auto").type == "cuda"


def test_cpu():
    dev = resolve_device("cpu")
    assert dev == torch.device("cpu")
    assert isinstance(dev, torch.device)


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:7", "mps"])
def test_unavailable_device_is_a_one_line_error_with_the_fix(no_accelerator, spec):
    with pytest.raises(DeviceError) as info:
        resolve_device(spec)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"device={spec} " in msg
    assert "device=cpu" in msg


def test_cuda_index_past_the_device_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError) as info:
        resolve_device("cuda:7")
    msg = str(info.value)
    assert "\n" not in msg
    assert "device=cuda:7" in msg
    assert "cuda:0..cuda:1" in msg
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda")


@pytest.mark.parametrize("spec", ["tpu", "gpu", "CPU", "", "cpu:0", "auto "])
def test_unknown_spec_raises(spec):
    with pytest.raises(DeviceError, match="unknown device") as info:
        resolve_device(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("spec", ["cudax", "cuda:abc", "cuda:-1"])
def test_malformed_cuda_spec_is_a_device_error_with_cuda(monkeypatch, spec):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError):
        resolve_device(spec)


# --- seeds and RNG states ----------------------------------------------------------------------


def test_seed_everything_repeats_the_streams(keep_rng):
    seed_everything(123)
    a_t, a_p = torch.randn(8), [random.random() for _ in range(4)]
    seed_everything(123)
    b_t, b_p = torch.randn(8), [random.random() for _ in range(4)]
    assert torch.equal(a_t, b_t)
    assert a_p == b_p
    seed_everything(124)
    assert not torch.equal(torch.randn(8), a_t)
    assert random.random() != a_p[0]


def test_seed_everything_matches_the_library_seeds(keep_rng):
    seed_everything(7)
    got_t, got_p = torch.rand(3), random.random()
    torch.manual_seed(7)
    random.seed(7)
    assert torch.equal(torch.rand(3), got_t)
    assert random.random() == got_p


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path, keep_rng):
    seed_everything(5)
    random.gauss(0.0, 1.0)  # leaves a cached second gauss value in the Python state
    path = tmp_path / "rng.pt"
    torch.save(rng_state(), path)
    expected_t = torch.randn(16)
    expected_p = [random.random(), random.gauss(0.0, 1.0), random.randint(0, 10**9)]

    seed_everything(99)  # move both streams somewhere else
    torch.randn(100)
    random.random()

    state = torch.load(path, weights_only=True)
    assert set(state) >= {"python", "torch"}
    set_rng_state(state)
    assert torch.equal(torch.randn(16), expected_t)
    assert [random.random(), random.gauss(0.0, 1.0), random.randint(0, 10**9)] == expected_p


def test_set_rng_state_accepts_lists_for_the_python_state(keep_rng):
    seed_everything(11)
    version, internal, gauss = rng_state()["python"]
    expected = random.random()
    seed_everything(12)
    set_rng_state({"python": [version, list(internal), gauss]})
    assert random.random() == expected


def test_set_rng_state_restores_only_what_is_given(keep_rng):
    seed_everything(1)
    torch_only = {"torch": rng_state()["torch"]}
    expected_t = torch.rand(4)
    seed_everything(2)
    expected_p = random.random()
    seed_everything(2)
    set_rng_state(torch_only)
    assert torch.equal(torch.rand(4), expected_t)
    assert random.random() == expected_p  # the Python stream was not touched


# --- threads -------------------------------------------------------------------------------------


@pytest.fixture
def keep_threads():
    old = torch.get_num_threads()
    yield old
    torch.set_num_threads(old)


def test_set_threads(keep_threads):
    new = 1 if keep_threads != 1 else 2
    set_threads(new)
    assert torch.get_num_threads() == new


@pytest.mark.parametrize("n", [None, 0, -1])
def test_set_threads_ignores_none_and_non_positive(keep_threads, n):
    torch.set_num_threads(1)
    set_threads(n)
    assert torch.get_num_threads() == 1


# --- malloc's reuse of freed memory --------------------------------------------------------------

FAULTS = """
import resource, sys, torch
from nfvi.runtime import keep_freed_memory
torch.set_num_threads(1)
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
if sys.argv[1].startswith("prepare"):  # what every train and eval job runs first
    from nfvi.config import Config
    from nfvi.jobs import prepare

    cfg = Config()
    cfg.trainer.num_threads = 1
    cfg.trainer.keep_freed_memory = sys.argv[1] == "prepare-keep"
    prepare(cfg)
from nfvi.vae.model import FlowVAE

torch.manual_seed(0)
model = FlowVAE(784, 40, [400, 400], "maxout", 4, "planar", 0, True)
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
x = torch.bernoulli(torch.full((100, 784), 0.13))


def step():  # the default model's training step: activations of 0.1-1.3 MiB, freed each step
    loss = model.elbo(x, beta=1.0).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(STEPS):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""".replace("STEPS", "20")


def faults(mode: str) -> tuple[str, int]:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_stops_the_page_faults_of_repeated_allocations():
    """By default glibc hands the step's freed activations back to the kernel (trimming the
    heap top, unmapping large chunks), so the next step faults fresh pages in; kept, every
    step reuses the previous one's pages."""
    _, default = faults("default")
    applied, kept = faults("keep")
    if applied != "True":
        pytest.skip("not glibc's malloc")
    assert default > 20 * 500  # the mechanism this fixes: >= 2 MiB of fresh pages every step
    assert kept < default / 10


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc only")
def test_every_job_keeps_freed_memory_unless_switched_off():
    _, kept = faults("prepare-keep")
    _, off = faults("prepare-off")
    if faults("keep")[0] != "True":
        pytest.skip("not glibc's malloc")
    assert off > 20 * 500 and kept < off / 10
