"""``nfvi train task=energy``: fit a flow to one of U1-U4 on the shared loop, evaluate it
exactly, draw it.

Training minimises the annealed reverse KL (R&M 2015, eq. 20)::

    F_beta_t = E_q0[ ln q0(z0) - sum_k ln|det_k| + beta_t U(z_K) ]

on Monte Carlo batches of ``trainer.mc_samples`` draws of ``q_0``. The flow is always global
(``amortized=False``), whatever ``flow.amortized`` says. Validation (every
``trainer.val_interval`` updates) is the free energy ``F_1 = KL(q || p) - ln Z`` on a fixed,
seeded batch of ``VAL_SAMPLES`` draws, so ``best.pt`` and early stopping follow the true
objective; the evaluation at the end is of the final model (the paper's protocol).

Files written into the run directory beside the loop's: ``summary.json``, ``density.png``
(the true density beside q_K) and ``samples.png``.
"""

from __future__ import annotations

import math

import torch
from rich.console import Console
from torch import Tensor

from nfvi.config import Config
from nfvi.energy.evaluate import estimate_kl, log_partition
from nfvi.energy.figures import plot_density, plot_samples
from nfvi.energy.model import EnergyModel
from nfvi.energy.targets import get_target
from nfvi.errors import ConfigError
from nfvi.optim import build_optimizer
from nfvi.runtime import seeded_eval
from nfvi.training import (
    Compiled,
    CudaGraphStep,
    Loop,
    StepOutput,
    TaskResult,
    Validation,
    require_cuda,
)

#: samples of q_K for the histogram of density.png (when the flow has no inverse)
HIST_SAMPLES = 1_000_000
#: bins per axis of that histogram on (-4, 4)^2
HIST_BINS = 200
#: draws of q_0 for each validation (fixed seed: every validation sees the same draws)
VAL_SAMPLES = 4096


class EnergyTask:
    """A flow fitted to one 2D energy (see the module docstring)."""

    name = "energy"
    steps_per_epoch = None

    def __init__(self, cfg: Config, device: torch.device, console: Console) -> None:
        self.cfg, self.device, self.console = cfg, device, console
        try:
            self.target = get_target(cfg.target.name, float(cfg.target.envelope_std))
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{e.args[0]} (target=u1|u2|u3|u4, target.envelope_std > 0)") from e
        hparams = dict(cfg.flow.hparams or {})
        self.model = EnergyModel(self.target, cfg.flow.name, cfg.K, dim=2,
                                 hparams=hparams, fused=cfg.flow.fused).to(device)
        self.optimizer = build_optimizer(self.model.parameters(), cfg.optim)
        t = cfg.trainer
        self.compiled = Compiled(self.train_terms, "the energy loss") if t.compile else None
        self.graph: CudaGraphStep | None = None
        if t.cuda_graph:
            require_cuda("trainer.cuda_graph", device)
            self.graph = CudaGraphStep(self.train_terms, list(self.model.parameters()),
                                       (torch.zeros((), device=device),))
        self._beta = torch.zeros((), device=device)  # beta for the compiled loss

    def describe(self) -> str:
        c, t = self.cfg, self.cfg.trainer
        return (f"energy {self.target.name}: {c.flow.name} K={c.K}, {t.mc_samples} samples "
                f"per update, {c.optim.name} lr {c.optim.lr}")

    def train_terms(self, beta: Tensor | float) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`EnergyModel.loss` on ``trainer.mc_samples`` fresh draws at ``beta`` (a float
        or a 0-d tensor), as ``(loss, stats)``: what ``trainer.compile`` compiles and
        ``trainer.cuda_graph`` captures (no ``float(beta)``: it would sync)."""
        s = self.model.sample(self.cfg.trainer.mc_samples)
        energy = self.model.target(s.z_K)
        loss = (s.log_q + beta * energy).mean()
        return loss, {"loss": loss.detach(), "free_energy": (s.log_q + energy).mean().detach()}

    def objective(self, beta: float) -> StepOutput:
        if self.graph is not None:
            loss, stats = self.graph(beta)
            return StepOutput(loss, stats, backward_done=True)
        if self.compiled is not None:
            self._beta.fill_(beta)
            loss, stats = self.compiled(self._beta)
        else:
            loss, stats = self.train_terms(beta)
        return StepOutput(loss, stats)

    def validate(self) -> Validation:
        with seeded_eval(self.model, self.device, self.cfg.seed + 3):
            f1 = self.model.loss(VAL_SAMPLES, 1.0).free_energy.item()
        return Validation(f1, {"free_energy": f1})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def finish(self, loop: Loop) -> TaskResult:
        """KL(q || p) of the final model against the exact ln Z, and the two figures."""
        model, target, cfg = self.model, self.target, self.cfg
        lz = log_partition(target)
        out = loop.run_dir
        with seeded_eval(model, self.device, cfg.eval.seed):
            est = estimate_kl(model, lz.log_z, cfg.eval.kl_samples)
            title = (f"{target.name}, {cfg.flow.name} K={cfg.K}: "
                     f"KL = {est.kl:.3f} ± {est.kl_stderr:.3f}")
            method = plot_density(target, lz.log_z, model, out / "density.png", title=title,
                                  grid=cfg.eval.grid, hist_samples=HIST_SAMPLES,
                                  hist_bins=HIST_BINS)
            plot_samples(target, lz.log_z, model, out / "samples.png", title=title)
        if not math.isfinite(est.kl):
            self.console.print("[yellow]warning: the KL estimate is not finite[/yellow]")
        self.console.print(f"KL(q||p) = {est.kl:.4f} ± {est.kl_stderr:.4f} nats  "
                           f"ln Z = {lz.log_z:.6f}  ESS = {est.ess_percent:.1f}%")
        t = cfg.trainer
        results = {
            "steps": loop.state.step, "kl": est.kl,
            "kl_stderr": est.kl_stderr, "log_z": lz.log_z, "ess_percent": est.ess_percent,
            "wall_seconds": loop.state.elapsed, "kl_samples": est.n,
            "kl_nonfinite_samples": est.nonfinite,
            "envelope_std": target.envelope_std,
            "log_z_quadrature": {"rule": "midpoint, uniform grid", "spacing": lz.spacing,
                                 "box": [list(lz.box[0]), list(lz.box[1])],
                                 "points": lz.points, "refinement_delta": lz.refinement_delta,
                                 "closed_form": lz.closed_form},
            "density_method": method, "mc_samples": t.mc_samples, "optim": str(cfg.optim.name),
            "lr": cfg.optim.lr,
            "beta_schedule": f"{t.beta_schedule}(start={t.beta_start}, steps={t.beta_steps})",
        }
        if loop.compile_seconds is not None:
            results["compile_seconds"] = loop.compile_seconds
        if self.graph is not None and self.graph.seconds is not None:
            results["cuda_graph_capture_seconds"] = self.graph.seconds
        return TaskResult(results, {"density": out / "density.png",
                                    "samples": out / "samples.png"})


def build(cfg: Config, device: torch.device, console: Console) -> EnergyTask:
    return EnergyTask(cfg, device, console)
