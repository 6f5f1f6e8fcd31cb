"""What the training loop adds to the bare model step of the default flow VAE.

Prints a markdown table, in one process and on one device, for planar K = 0 and K = 10 of the
``nfvi train`` defaults (784-400-400 maxout, 40 latents, amortized planar flows, batch 100,
Adam, the default trainer's KL warm-up and cosine learning rate) on the bundled MNIST data:

* **bare step**: ``model.elbo`` of one pre-binarized batch, backward, Adam step -- nothing else;
* **loop step**: :class:`nfvi.training.Loop` running the real :class:`nfvi.vae.run.VAETask`
  (minibatch indexing, dynamic binarization, the schedules, the non-finite guard, the stats
  window, a metrics.jsonl line every ``trainer.log_interval`` updates) with validation and
  checkpoints out of the way (``val_interval`` beyond the run; the time spent in the one
  final validation and the checkpoints is measured and subtracted);
* **val+ckpt per step**: one validation with its best.pt and last.pt writes, divided by the
  default ``trainer.val_interval`` -- what they add to each step of a default run;
* **loop's own ms**: loop step minus bare step of a *tiny* model (one hidden layer of 8, 2
  latents, same data and batch), where the model's few hundred microseconds leave the loop's
  fixed per-step work (indexing, binarization, bookkeeping: independent of the model) well
  above the timing noise; the default model's (loop - bare) difference is within the noise
  of a shared machine. ``own/bare`` is that over the default model's bare step: the
  acceptance figure (at most 5%).

    python benchmarks/bench_loop.py [--K 0 10] [--steps 50] [--rounds 5] [--probe-steps 200]
        [--threads 1] [--device cpu|cuda] [--compile]

Bare and loop steps are timed in alternating rounds of ``--steps`` updates, the fastest round
of each, so a shared machine's drifts hit both alike. On the CPU the steps are timed in CPU
seconds of this process (``time.process_time``: with one torch thread all the work is this
thread's, and other processes on a busy machine do not inflate it); on CUDA in wall seconds
after a synchronize. Validation and checkpoints are in wall seconds (they wait on the disk).
``--compile`` also times both with ``trainer.compile=true``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from nfvi.config import compose_config, typed
from nfvi.data import binarize
from nfvi.training import Loop
from nfvi.vae.run import VAETask

QUIET = Console(quiet=True)


def default_config(K: int, device: str, compiled: bool, *overrides: str):
    """The typed config of ``nfvi train K=<K> dataset.source=bundled`` (plus ``overrides``)."""
    return typed(compose_config(f"K={K}", "dataset.source=bundled", f"device={device}",
                                "trainer.progress=false",
                                *(["trainer.compile=true"] if compiled else []), *overrides))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """Wraps ``fn`` and adds its wall seconds (synchronized) to :attr:`seconds`."""

    def __init__(self, fn, device: torch.device) -> None:
        self.fn, self.device, self.seconds, self.cpu, self.calls = fn, device, 0.0, 0.0, 0
        self.clock = time.process_time if device.type == "cpu" else time.perf_counter

    def __call__(self, *args, **kw):
        sync(self.device)
        t0, c0 = time.perf_counter(), self.clock()
        try:
            return self.fn(*args, **kw)
        finally:
            sync(self.device)
            self.seconds += time.perf_counter() - t0
            self.cpu += self.clock() - c0  # in the step timer's clock, to subtract
            self.calls += 1


def bare(task: VAETask, device: torch.device):
    """One bare update of ``task``'s model: the first batch binarized once, the loss (``elbo``,
    or the compiled loss of ``trainer.compile``), backward, Adam -- nothing else."""
    x = binarize(task.train_x[: task.cfg.trainer.batch_size], "dynamic")
    model, opt, anneal = task.model, task.optimizer, task.anneal
    beta = torch.full((), 0.5, device=device)
    compiled = getattr(task, "compiled", None)

    def step() -> None:
        if compiled is not None:
            loss = compiled(x, beta)[0]
        else:
            loss = model.elbo(x, 0.5, anneal).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def measure(K: int, device: torch.device, steps: int, rounds: int, compiled: bool,
            *model: str) -> dict:
    """Seconds per bare step, per loop step, and validation + checkpoints per default step
    (``model``: overrides of the model, e.g. the tiny probe's)."""
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    default = default_config(K, device.type, compiled, *model)
    val_interval = default.trainer.val_interval
    # val_interval beyond any round: the only validation is the one at each round's last step
    cfg = default_config(K, device.type, compiled, "trainer.val_interval=100000000",
                         "trainer.patience=null", *model)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        task = VAETask(cfg, device, QUIET)
        loop = Loop(task, cfg.trainer, Path(tmp), QUIET, config={"K": K})
        loop.validate = Timed(loop.validate, device)
        loop.save = Timed(loop.save, device)
        bare_step = bare(task, device)
        for _ in range(3):
            bare_step()  # warm-up (and the compiled graph's compilation)
        best_bare = best_loop = float("inf")
        for r in range(rounds + 1):  # round 0: warm-up of the loop
            sync(device)
            t0 = clock()
            for _ in range(steps):
                bare_step()
            sync(device)
            t_bare = (clock() - t0) / steps
            loop.t.max_steps = loop.state.step + steps
            aside = loop.validate.cpu + loop.save.cpu
            t0 = clock()
            loop.run()
            sync(device)
            spent = clock() - t0 - (loop.validate.cpu + loop.save.cpu - aside)
            if r:
                best_bare, best_loop = min(best_bare, t_bare), min(best_loop, spent / steps)
        # one validation with its checkpoints (the first round's, after the warm-up, excluded)
        val = loop.validate.seconds / loop.validate.calls
    return {"bare": best_bare, "loop": best_loop, "val_per_step": val / val_interval,
            "val_interval": val_interval}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--K", type=int, nargs="+", default=[0, 10])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--probe-steps", type=int, default=200,
                    help="updates per round of the tiny model that measures the loop's own cost")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--compile", action="store_true", help="also time trainer.compile=true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; use --device cpu")
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {what}; batch 100, bundled MNIST, fastest of "
          f"{args.rounds} rounds of {args.steps} updates\n")
    print("| K | compiled | bare step ms | loop step ms | loop/bare | val+ckpt ms/step "
          "(every N) | loop's own ms (tiny model) | own/bare | (own+val)/bare |")
    print("|---:|:---|---:|---:|---:|---:|---:|---:|---:|")
    tiny = ("model.hidden=[8]", "model.latent_dim=2")
    for K in args.K:
        for compiled in (False, True) if args.compile else (False,):
            m = measure(K, device, args.steps, args.rounds, compiled)
            p = measure(K, device, args.probe_steps, args.rounds, compiled, *tiny)
            b, lp, v = m["bare"], m["loop"], m["val_per_step"]
            own = p["loop"] - p["bare"]
            print(f"| {K} | {'yes' if compiled else 'no'} | {b * 1e3:.2f} | {lp * 1e3:.2f} | "
                  f"{lp / b:.3f} | {v * 1e3:.2f} ({m['val_interval']}) | {own * 1e3:.3f} | "
                  f"{own / b:.1%} | {(own + v) / b:.1%} |", flush=True)

if __name__ == "__main__":
    main()
