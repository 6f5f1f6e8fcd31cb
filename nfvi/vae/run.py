"""The VAE task on the shared loop (Rezende & Mohamed 2015, section 6.2).

:class:`VAETask` gives :class:`nfvi.training.Loop` its objective (the annealed free energy of a
minibatch, dynamically binarized for binary likelihoods), its validation (-ELBO on the fixed
validation inputs), its resumable state (the data order and the binarization generator) and
its finish (the best checkpoint evaluated on the test split with the importance-weighted NLL,
and two figures).
:func:`evaluate_checkpoint` is ``nfvi eval``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from rich.console import Console
from torch import Tensor

from nfvi.checkpoint import load_checkpoint
from nfvi.config import Config
from nfvi.data import LoadedData, binarize, fixed_binarization, load_dataset
from nfvi.errors import ConfigError
from nfvi.optim import build_optimizer
from nfvi.rundir import BEST, atomic_write_json, checkpoint_path, per_example_file
from nfvi.training import (
    Compiled,
    CudaGraphStep,
    Loop,
    StepOutput,
    TaskResult,
    Validation,
    require_cuda,
)
from nfvi.vae.evaluate import EvalResult, evaluate, validation_neg_elbo
from nfvi.vae.figures import draw_reconstructions, draw_samples
from nfvi.vae.likelihoods import bits_per_dim
from nfvi.vae.model import FlowVAE
from nfvi.vae.networks import ShapeError

log = logging.getLogger("nfvi")

# seed offsets of the fixed binarizations: the run's own evaluation and `nfvi eval` must agree
_SPLIT_SEED = {"val": 1, "test": 4}


def load_data(cfg: Config, console: Console) -> LoadedData:
    d = cfg.dataset
    data = load_dataset(name=d.name, source=str(d.source), data_dir=d.data_dir,
                        download=d.download, val_size=d.val_size, split_seed=d.split_seed)
    if data.note:
        console.print(f"[bold yellow]{data.note}[/]")
        log.info(data.note)  # the log file keeps it; the console already shows it
    log.info("data: %s (%s) from %s: train %d, val %d, test %d", data.name, data.source,
             data.location, len(data.train), len(data.val), len(data.test))
    return data


def eval_inputs(cfg: Config, data: LoadedData, split: str, device: torch.device,
                limit: int | None = None) -> Tensor:
    """The ``val`` or ``test`` images binarized once, the same way for every evaluation: a
    fixed seed (dynamic mode) or ``dataset.threshold`` (threshold mode); on ``device``; the
    first ``limit`` of them when given (``eval.max_examples``)."""
    raw = data.test if split == "test" else data.val
    x = fixed_binarization(raw, str(cfg.dataset.binarize), seed=cfg.seed + _SPLIT_SEED[split],
                           threshold=cfg.dataset.threshold)
    return (x if limit is None else x[:limit]).to(device)


def build_model(cfg: Config, data: LoadedData) -> FlowVAE:
    """The configured :class:`FlowVAE` for ``data``'s pixel count and image shape; a shape the
    architecture cannot take is a one-line :class:`ConfigError`."""
    try:
        return FlowVAE.from_config(cfg, data.train.shape[1], tuple(data.image_shape))
    except ShapeError as ex:
        raise ConfigError(f"model={cfg.model.name} on {data.name}: {ex}") from ex


class Batches:
    """Minibatch indices from a seeded permutation per epoch (the ragged last batch dropped).

    The permutation is drawn on the CPU (the same order on every device) and copied to
    ``device`` once per epoch, so :meth:`take` hands out device indices without a host-to-device
    copy per step."""

    def __init__(self, n: int, batch_size: int, seed: int,
                 device: torch.device | None = None) -> None:
        self.n, self.batch_size, self.device = n, batch_size, device
        self.per_epoch = max(1, n // batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self._set_perm(torch.randperm(n, generator=self.generator))
        self.position = 0

    def _set_perm(self, perm: Tensor) -> None:
        self.perm = perm
        self._perm_on = perm if self.device is None else perm.to(self.device)

    def take(self) -> Tensor:
        """The next ``batch_size`` indices ``[batch_size]`` (int64, on ``device``)."""
        i = self.position * self.batch_size
        idx = self._perm_on[i : i + self.batch_size]
        self.position += 1
        if self.position >= self.per_epoch:
            self.position = 0
            self._set_perm(torch.randperm(self.n, generator=self.generator))
        return idx

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm,
                "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._set_perm(state["perm"].cpu())
        self.position = int(state["position"])


class VAETask:
    """The flow VAE on one data set (see the module docstring)."""

    name = "vae"

    def __init__(self, cfg: Config, device: torch.device, console: Console) -> None:
        self.cfg, self.device, self.console = cfg, device, console
        self.data = load_data(cfg, console)
        cfg.dataset.resolved_source = self.data.source
        self.mode, self.threshold = str(cfg.dataset.binarize), cfg.dataset.threshold
        self.anneal = str(cfg.trainer.anneal)
        self.train_x = self.data.train.to(device)
        self.val_x = eval_inputs(cfg, self.data, "val", device)
        self.model = build_model(cfg, self.data).to(device)
        self.optimizer = build_optimizer(self.model.parameters(), cfg.optim)
        self.batches = Batches(len(self.train_x), cfg.trainer.batch_size, cfg.seed, device)
        self.steps_per_epoch = self.batches.per_epoch
        self.bin_gen = torch.Generator(device=device).manual_seed(cfg.seed + 2)
        self.compiled: Compiled | None = None
        self.graph: CudaGraphStep | None = None
        t = cfg.trainer
        if t.compile:
            self.compiled = Compiled(self.train_terms, "the VAE's training loss")
            compile_iw(self.model)
        if t.cuda_graph:
            require_cuda("trainer.cuda_graph", device)
            x = torch.zeros(t.batch_size, self.train_x.shape[1], device=device)
            self.graph = CudaGraphStep(self.train_terms, list(self.model.parameters()),
                                       (x, torch.zeros((), device=device)))
        # beta as a device scalar for the compiled loss (a Python float would be a constant)
        self._beta = torch.zeros((), device=device)

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        c = self.cfg
        return (f"{c.flow.name} K={c.K} on {c.dataset.name} ({self.data.source}), "
                f"{n:,} parameters")

    def train_terms(self, x: Tensor, beta: Tensor | float) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss of a batch ``x [B, P]`` at ``beta`` (a float or a 0-d tensor)
        and its logged stats (detached scalars): the function ``trainer.compile`` compiles and
        ``trainer.cuda_graph`` captures."""
        t = self.model.elbo(x, beta=beta, anneal=self.anneal)
        return t.loss, {"loss": t.loss.detach(), "neg_elbo": t.neg_elbo.detach().mean(),
                        "recon": t.recon.detach().mean(), "kl": t.kl.detach().mean()}

    def batch(self) -> Tensor:
        """The next minibatch ``[B, P]``, binarized (dynamic mode: fresh bits every time).

        ``index_select`` is advanced indexing's gather without its overhead. On the CPU, the
        dynamic bits of float32 pixels are drawn as ``rand < x``: the very draws (and the
        generator state after them) of ``torch.bernoulli(x)``, whose CPU kernel takes one
        24-bit uniform per pixel and compares it the same way, at a third of its cost
        (tests/vae/test_run.py holds torch to that)."""
        x = torch.index_select(self.train_x, 0, self.batches.take())
        if self.mode == "dynamic" and x.device.type == "cpu" and x.dtype == torch.float32:
            u = torch.rand(x.shape, generator=self.bin_gen, dtype=torch.float32)
            return (u < x).to(x.dtype)
        return binarize(x, self.mode, generator=self.bin_gen, threshold=self.threshold)

    def objective(self, beta: float) -> StepOutput:
        x = self.batch()
        if self.graph is not None:
            loss, stats = self.graph(x, beta)
            return StepOutput(loss, stats, backward_done=True)
        if self.compiled is not None:
            self._beta.fill_(beta)
            loss, stats = self.compiled(x, self._beta)
        else:
            loss, stats = self.train_terms(x, beta)
        return StepOutput(loss, stats)

    def validate(self) -> Validation:
        val = validation_neg_elbo(self.model, self.val_x, self.cfg.eval.batch_size,
                                  seed=self.cfg.seed + 3)
        return Validation(val["neg_elbo"], val)

    def state_dict(self) -> dict:
        return {"batches": self.batches.state_dict(), "binarize": self.bin_gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
        self.bin_gen.set_state(state["binarize"])

    def finish(self, loop: Loop) -> TaskResult:
        """Evaluate best.pt on the test split; draw samples and reconstructions."""
        best = load_checkpoint(checkpoint_path(loop.run_dir, BEST), map_location=self.device)
        self.model.load_state_dict(best["model"])
        s = loop.state
        training = {"data_source": self.data.source, "steps": s.step, "epochs": loop.epoch,
                    "best_step": s.best_step, "stopped_early": s.stopped_early,
                    "skipped_steps": s.skipped_steps, "wall_seconds": s.elapsed,
                    "val_neg_elbo": s.best_score}
        if loop.compile_seconds is not None:
            training["compile_seconds"] = loop.compile_seconds
        if self.graph is not None and self.graph.seconds is not None:
            training["cuda_graph_capture_seconds"] = self.graph.seconds
        self.console.print(f"evaluating best.pt (step {s.best_step}) on the test split")
        return test_and_draw(self.cfg, self.model, self.data, "test", loop.run_dir, training,
                             self.device)


def compile_iw(model: FlowVAE) -> None:
    """``trainer.compile``: the IS estimate's per-chunk pass through ``torch.compile`` (one
    graph per chunk size: ``eval.chunk`` and the remainder)."""
    model.iw_chunk_fn = Compiled(model.iw_log_weights, "the importance-sampling pass",
                                 dynamic=False)


def test_and_draw(cfg: Config, model: FlowVAE, data: LoadedData, split: str, out_dir: Path,
                  before: dict, device: torch.device) -> TaskResult:
    """The evaluation shared by a run's end and ``nfvi eval``: -ELBO and IS NLL on ``split``
    (the fixed bits of :func:`eval_inputs`), and the two figures in ``out_dir``."""
    x = eval_inputs(cfg, data, split, device, cfg.eval.max_examples)
    res = evaluate(model, x, cfg.eval.iw_samples, cfg.eval.chunk, cfg.eval.batch_size,
                   seed=cfg.eval.seed, memory_gb=cfg.eval.memory_gb)
    figures = {"samples": out_dir / "samples.png",
               "reconstructions": out_dir / "reconstructions.png"}
    draw_samples(model, data.image_shape, figures["samples"], seed=cfg.seed)
    draw_reconstructions(model, x, data.image_shape, figures["reconstructions"], seed=cfg.seed)
    # per test point: runs of two models on the same bits can be compared pair by pair
    atomic_write_json(out_dir / per_example_file(split),
                      {"split": split, "iw_samples": res.iw_samples, **res.per_example})
    pixels = x.shape[1] if model.likelihood.eight_bit else None
    compiled = getattr(model.iw_chunk_fn, "seconds", None)
    extra = {} if compiled is None else {"iw_compile_seconds": compiled}
    return TaskResult({**before, **split_results(split, res, pixels), **extra}, figures)


def split_results(split: str, res: EvalResult, pixels: int | None = None) -> dict:
    """The summary's entries for ``split``; with ``pixels`` (8-bit data) also -ELBO and NLL in
    bits per dimension, ``nats / (pixels ln 2)``."""
    out = {f"{split}_neg_elbo": res.neg_elbo, f"{split}_neg_elbo_stderr": res.neg_elbo_stderr,
           f"{split}_nll": res.nll, f"{split}_nll_stderr": res.nll_stderr,
           f"{split}_recon": res.recon, f"{split}_kl": res.kl,
           f"{split}_gap": res.neg_elbo - res.nll,
           f"{split}_examples": res.examples, "iw_samples": res.iw_samples,
           "elbo_samples": res.elbo_samples,
           "eval_seconds": res.seconds, "eval_chunk": res.chunk,
           "eval_peak_memory_mb": res.peak_memory_mb, "eval_memory_kind": res.memory_kind}
    if pixels is not None:
        out[f"{split}_neg_elbo_bpd"] = bits_per_dim(res.neg_elbo, pixels)
        out[f"{split}_nll_bpd"] = bits_per_dim(res.nll, pixels)
    return out


def build(cfg: Config, device: torch.device, console: Console) -> VAETask:
    return VAETask(cfg, device, console)


def evaluate_checkpoint(cfg: Config, ckpt: dict, ckpt_path: Path, out_dir: Path,
                        device: torch.device, console: Console) -> TaskResult:
    """``nfvi eval``: rebuild the saved model and evaluate it on ``eval.split``."""
    data = load_data(cfg, console)
    trained_on = ckpt["config"]["dataset"].get("resolved_source")
    if trained_on not in (None, data.source):
        console.print(f"[bold yellow]WARNING:[/] the run trained on the {trained_on} data but "
                      f"{data.source} data is evaluated now")
    model = build_model(cfg, data).to(device)
    model.load_state_dict(ckpt["model"])
    if cfg.trainer.compile:
        compile_iw(model)
    split = str(cfg.eval.split)
    console.print(f"evaluating {ckpt_path} on the {split} split, S={cfg.eval.iw_samples}, "
                  f"device {device}")
    before = {"checkpoint": str(ckpt_path), "step": ckpt["state"]["step"],
              "data_source": data.source, "split": split}
    return test_and_draw(cfg, model, data, split, out_dir, before, device)
