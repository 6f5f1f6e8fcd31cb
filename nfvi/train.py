"""Training of the flow VAE: a thin loop around ``FlowVAE.elbo``.

Everything a run needs to continue exactly where it stopped (model, optimizer, step, epoch,
the epoch's data order and position, the best metric, every RNG state) goes into
``checkpoints/last.pt``; ``best.pt`` holds the model with the best validation -ELBO.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

import nfvi
from nfvi.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from nfvi.data import LoadedData, binarize, fixed_binarization, load_dataset
from nfvi.evaluate import EvalResult, evaluate, validation_neg_elbo
from nfvi.figures import draw_reconstructions, draw_samples
from nfvi.loggers import make_logger
from nfvi.models import FlowVAE
from nfvi.optim import build_optimizer
from nfvi.runtime import rng_state, seed_everything, set_rng_state
from nfvi.schedules import annealing_done, beta_at

log = logging.getLogger("nfvi")


@dataclass
class TrainState:
    """Counters saved with every checkpoint (plain values only)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_val: float = math.inf
    best_step: int = -1
    bad_validations: int = 0
    elapsed: float = 0.0
    stopped_early: bool = False


class Interrupted(Exception):
    """Raised by the loop after Ctrl-C / SIGTERM once ``last.pt`` is safely written."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalFlag:
    """Turns SIGINT/SIGTERM (and SIGUSR1/2) into a flag the loop checks between steps.

    SIGUSR1/2 are caught only where someone already handles them (submitit's pre-emption and
    time-out signal on SLURM): after ``last.pt`` is written, :meth:`chain` hands the signal on
    to that handler, which requeues the job.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def __enter__(self) -> SignalFlag:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            try:
                if s in (signal.SIGUSR1, signal.SIGUSR2) and not callable(signal.getsignal(s)):
                    continue
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (some launchers): no handler
                pass
        return self

    def chain(self) -> None:
        """Call the handler that was there before ours (submitit's requeue), if any."""
        old = self._old.get(self.signum) if self.signum is not None else None
        if self.signum in (signal.SIGUSR1, signal.SIGUSR2) and callable(old):
            old(self.signum, None)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class Batches:
    """Minibatches of a tensor taken by index from a seeded permutation per epoch."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.per_epoch = max(1, n // batch_size)  # drop the ragged last batch
        self.perm = torch.randperm(n, generator=generator)

    def new_epoch(self) -> None:
        self.perm = torch.randperm(self.n, generator=self.generator)

    def indices(self, batch_in_epoch: int) -> torch.Tensor:
        i = batch_in_epoch * self.batch_size
        return self.perm[i : i + self.batch_size]


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (flushed each write), and mirrors
    each record to the optional logger (``logger=tensorboard``)."""

    def __init__(self, path: Path, mirror=None) -> None:
        self.path = path
        self.mirror = mirror

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.mirror is not None:
            self.mirror.write(record)

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (written after the checkpoint we resume from)."""
        if not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["step"] <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))


def versions() -> dict:
    return {
        "nfvi": nfvi.__version__,
        "torch": str(torch.__version__),
        "python": ".".join(map(str, sys.version_info[:3])),
    }


def load_data(cfg, console: Console) -> LoadedData:
    d = cfg.dataset
    data = load_dataset(
        name=d.name,
        source=str(getattr(d.source, "value", d.source)),
        data_dir=d.data_dir,
        download=d.download,
        val_size=d.val_size,
        split_seed=d.split_seed,
    )
    if data.note:
        console.print(f"[bold yellow]{data.note}[/]")
        log.info(data.note)  # the log file keeps it; the console already shows it
    log.info("data: %s (%s) from %s: train %d, val %d, test %d", data.name, data.source,
             data.location, len(data.train), len(data.val), len(data.test))
    return data


def _binarize_mode(cfg) -> str:
    return str(getattr(cfg.dataset.binarize, "value", cfg.dataset.binarize))


# seed offsets of the fixed binarizations: the run's own evaluation and `nfvi eval` must agree
_SPLIT_SEED = {"val": 1, "test": 4}


def eval_inputs(cfg, data: LoadedData, split: str, device: torch.device,
                limit: int | None = None) -> torch.Tensor:
    """The ``val`` or ``test`` images, binarized once with a fixed seed, on ``device``; the
    first ``limit`` of them when given (``eval.max_examples``)."""
    raw = data.test if split == "test" else data.val
    x = fixed_binarization(raw, _binarize_mode(cfg), seed=cfg.seed + _SPLIT_SEED[split])
    return (x if limit is None else x[:limit]).to(device)


class Trainer:
    """Owns the model, optimizer, data and state of one run; ``fit`` is the loop."""

    def __init__(self, cfg, run_dir: Path, device: torch.device, console: Console) -> None:
        self.cfg, self.run_dir, self.device, self.console = cfg, run_dir, device, console
        self.ckpt_dir = run_dir / "checkpoints"
        self.logger = make_logger(cfg.logger.name, run_dir)
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", self.logger)
        seed_everything(cfg.seed)
        self.data = load_data(cfg, console)
        cfg.dataset.resolved_source = self.data.source
        self.mode = _binarize_mode(cfg)  # read once: the config is slow to query per step
        self.train_x = self.data.train.to(device)
        # val/test binarized once with a fixed seed: every evaluation sees the same bits
        self.val_x = eval_inputs(cfg, self.data, "val", device)
        self.model = FlowVAE.from_config(cfg, self.train_x.shape[1]).to(device)
        self.optimizer = build_optimizer(self.model.parameters(), cfg.optim)
        self.order_gen = torch.Generator().manual_seed(cfg.seed)
        self.bin_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
        self.batches = Batches(len(self.train_x), cfg.trainer.batch_size, self.order_gen)
        self.state = TrainState()
        # running sums of (loss, -elbo, recon, kl) since the last log line: part of the state,
        # so that a resumed run logs the same averages as an uninterrupted one
        self.window = torch.zeros(4, device=device)
        self.window_n = 0

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": {
                "name": str(getattr(self.cfg.trainer.beta_schedule, "value",
                                    self.cfg.trainer.beta_schedule)),
                "start": self.cfg.trainer.beta_start,
                "steps": self.cfg.trainer.beta_steps,
                "beta": self.beta(self.state.step),
            },
            "state": asdict(self.state),
            "rng": rng_state(),
            "data_rng": {
                "order": self.order_gen.get_state(),
                "binarize": self.bin_gen.get_state(),
                "perm": self.batches.perm,
            },
            "log_window": {"sum": self.window, "n": self.window_n},
            "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
            "versions": versions(),
        }

    def save(self, name: str) -> Path:
        path = self.ckpt_dir / name
        save_checkpoint(path, self.checkpoint())
        return path

    def restore(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        self.order_gen.set_state(ckpt["data_rng"]["order"])
        self.bin_gen.set_state(ckpt["data_rng"]["binarize"])
        self.batches.perm = ckpt["data_rng"]["perm"]
        self.window = ckpt["log_window"]["sum"].to(self.device)
        self.window_n = ckpt["log_window"]["n"]
        self.metrics.truncate_after(self.state.step)

    # -- the loop ----------------------------------------------------------------------
    def beta(self, step: int) -> float:
        t = self.cfg.trainer
        return beta_at(step, t.beta_schedule, t.beta_start, t.beta_steps)

    def _max_steps(self) -> int:
        t = self.cfg.trainer
        limit = t.max_steps
        if t.max_epochs is not None:
            limit = min(limit, t.max_epochs * self.batches.per_epoch)
        return limit

    def _train_step(self) -> tuple[torch.Tensor, float]:
        t = self.cfg.trainer
        idx = self.batches.indices(self.state.batch_in_epoch).to(self.device)
        x = binarize(self.train_x[idx], self.mode, generator=self.bin_gen,
                     threshold=self.cfg.dataset.threshold)
        beta = self.beta(self.state.step)
        terms = self.model.elbo(x, beta=beta)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        if t.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
        self.state.step += 1
        self.state.batch_in_epoch += 1
        if self.state.batch_in_epoch >= self.batches.per_epoch:
            self.state.batch_in_epoch = 0
            self.state.epoch += 1
            self.batches.new_epoch()
        stats = torch.stack([terms.loss.detach(), terms.neg_elbo.detach().mean(),
                             terms.recon.detach().mean(), terms.kl.detach().mean()])
        return stats, beta

    def _validate(self) -> dict:
        t = self.cfg.trainer
        val = validation_neg_elbo(self.model, self.val_x, self.cfg.eval.batch_size,
                                  seed=self.cfg.seed + 3)
        improved = val["neg_elbo"] < self.state.best_val
        if improved:
            self.state.best_val, self.state.best_step = val["neg_elbo"], self.state.step
            self.state.bad_validations = 0
            self.save("best.pt")
        elif annealing_done(self.state.step, t.beta_schedule, t.beta_start, t.beta_steps):
            # patience only counts once the objective is the true bound (beta = 1)
            self.state.bad_validations += 1
        return val

    def fit(self, flag: SignalFlag) -> TrainState:
        t = self.cfg.trainer
        max_steps = self._max_steps()
        lr = self.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter() - self.state.elapsed
        progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not t.progress,
            transient=False,
        )
        last_log_time, last_log_step = time.perf_counter(), self.state.step
        with progress:
            bar = progress.add_task("train", total=max_steps, completed=self.state.step, info="")
            while self.state.step < max_steps:
                stats, beta = self._train_step()
                self.window += stats
                self.window_n += 1
                step = self.state.step
                if step % t.log_interval == 0 or step == max_steps:
                    # one device sync per log interval, not per step
                    loss, neg_elbo, recon, kl = (self.window / self.window_n).tolist()
                    self.window.zero_()
                    self.window_n = 0
                    now = time.perf_counter()
                    rate = (step - last_log_step) / max(now - last_log_time, 1e-9)
                    last_log_time, last_log_step = now, step
                    self.metrics.write({
                        "step": step, "epoch": self.state.epoch, "split": "train",
                        "loss": loss, "neg_elbo": neg_elbo, "recon": recon, "kl": kl,
                        "beta": beta, "lr": lr, "elapsed": now - t0,
                    })
                    progress.update(bar, completed=step, info=(
                        f"loss {loss:.2f}  -elbo {neg_elbo:.2f}  beta {beta:.3f}  "
                        f"{rate:.1f} steps/s"))
                if step % t.val_interval == 0 or step == max_steps:
                    val = self._validate()
                    self.metrics.write({
                        "step": step, "epoch": self.state.epoch, "split": "val",
                        "neg_elbo": val["neg_elbo"], "recon": val["recon"], "kl": val["kl"],
                        "beta": 1.0, "lr": lr, "elapsed": time.perf_counter() - t0,
                    })
                    log.info("step %d: val -ELBO %.3f (best %.3f at step %d)", step,
                             val["neg_elbo"], self.state.best_val, self.state.best_step)
                    # a killed job (no signal, e.g. SIGKILL) loses at most one interval
                    self.state.elapsed = time.perf_counter() - t0
                    self.save("last.pt")
                    if t.patience is not None and self.state.bad_validations >= t.patience:
                        self.state.stopped_early = True
                        self.console.print(f"early stop at step {step}: no validation "
                                           f"improvement in {t.patience} validations")
                        self.state.elapsed = time.perf_counter() - t0
                        self.save("last.pt")
                        break
                if flag.signum is not None:
                    self.state.elapsed = time.perf_counter() - t0
                    self.save("last.pt")
                    raise Interrupted(flag.signum)
            else:
                self.state.elapsed = time.perf_counter() - t0
                self.save("last.pt")
        return self.state


def resolve_resume(path: str) -> Path:
    """A run directory or a checkpoint file -> the ``last.pt`` to resume from."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    return p


def run_vae(cfg, run_dir: Path, device: torch.device, console: Console) -> dict:
    """Train (or resume) the flow VAE in ``run_dir``, then evaluate ``best.pt`` on the test set."""
    trainer = Trainer(cfg, run_dir, device, console)
    if cfg.resume:
        ckpt = load_checkpoint(resolve_resume(cfg.resume), map_location=device)
        trainer.restore(ckpt)
        console.print(f"resuming {run_dir} from step {trainer.state.step}")
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    n_params = sum(p.numel() for p in trainer.model.parameters())
    console.print(
        f"[bold]nfvi[/] {cfg.flow.name} K={cfg.K} on {cfg.dataset.name} ({trainer.data.source}), "
        f"{n_params:,} parameters, device {device}, {torch.get_num_threads()} CPU threads\n"
        f"run directory: {run_dir}"
    )
    log.info("device %s, torch threads %d", device, torch.get_num_threads())
    with SignalFlag() as flag:
        try:
            state = trainer.fit(flag)
        except Interrupted as e:
            last = trainer.ckpt_dir / "last.pt"
            console.print(
                f"[bold red]interrupted ({e}) at step {trainer.state.step}[/]; saved {last}\n"
                f"resume with: nfvi train resume={run_dir}"
            )
            flag.chain()  # on SLURM: submitit requeues the job, which resumes here
            raise SystemExit(128 + e.signum) from None

    # evaluate the best model on the test split
    best = load_checkpoint(trainer.ckpt_dir / "best.pt", map_location=device)
    trainer.model.load_state_dict(best["model"])
    test_x = eval_inputs(cfg, trainer.data, "test", device, cfg.eval.max_examples)
    console.print(f"evaluating best.pt (step {best['state']['step']}) on {len(test_x)} test "
                  f"points with S={cfg.eval.iw_samples} importance samples")
    res = evaluate(trainer.model, test_x, cfg.eval.iw_samples, cfg.eval.chunk,
                   cfg.eval.batch_size, seed=cfg.eval.seed)
    shape = trainer.data.image_shape
    draw_samples(trainer.model, shape, run_dir / "samples.png", seed=cfg.seed)
    draw_reconstructions(trainer.model, test_x, shape, run_dir / "reconstructions.png",
                         seed=cfg.seed)
    summary = summarize(cfg, state, res, device, trainer.data)
    atomic_write_json(run_dir / "summary.json", summary)
    for name in ("samples", "reconstructions"):
        trainer.logger.image(name, run_dir / f"{name}.png", state.step)
    trainer.logger.close()
    return summary


def summarize(cfg, state: TrainState, res: EvalResult, device: torch.device,
              data: LoadedData) -> dict:
    return {
        "task": "vae",
        "dataset": cfg.dataset.name,
        "data_source": data.source,
        "flow": cfg.flow.name,
        "K": cfg.K,
        "amortized": cfg.flow.amortized,
        "seed": cfg.seed,
        "steps": state.step,
        "epochs": state.epoch,
        "best_step": state.best_step,
        "stopped_early": state.stopped_early,
        "wall_seconds": state.elapsed,
        "val_neg_elbo": state.best_val,
        "test_neg_elbo": res.neg_elbo,
        "test_neg_elbo_stderr": res.neg_elbo_stderr,
        "test_nll": res.nll,
        "test_nll_stderr": res.nll_stderr,
        "test_recon": res.recon,
        "test_kl": res.kl,
        "test_examples": res.examples,
        "iw_samples": res.iw_samples,
        "eval_seconds": res.seconds,
        "device": str(device),
        "versions": versions(),
    }
