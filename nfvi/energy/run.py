"""``nfvi train task=energy``: fit a flow to one of U1-U4, evaluate it exactly, draw it.

Training minimises the annealed reverse KL (R&M 2015, eq. 20)::

    F_beta_t = E_q0[ ln q0(z0) - sum_k ln|det_k| + beta_t U(z_K) ]

on Monte Carlo batches of ``trainer.mc_samples`` draws of ``q_0`` for ``trainer.max_steps``
updates, with ``beta_t`` from ``trainer.beta_schedule / beta_start / beta_steps``, the optimizer
of the ``optim`` group and optional ``trainer.grad_clip``. The flow is always global
(``amortized=False``), whatever ``flow.amortized`` says. ``trainer.batch_size``,
``val_interval`` (here: the checkpoint interval) and ``patience`` are the VAE's; the energy task
uses ``mc_samples`` as its batch.

Files written into ``run_dir``: ``metrics.jsonl`` (one object per logged step: step, loss,
free_energy, beta, lr, elapsed; averages over the steps since the previous line),
``checkpoints/last.pt``, ``summary.json``, ``density.png`` and ``samples.png``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from nfvi.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from nfvi.energy.evaluate import estimate_kl, log_partition
from nfvi.energy.figures import plot_density, plot_samples
from nfvi.energy.model import EnergyModel
from nfvi.energy.targets import get_target
from nfvi.errors import CheckpointError, ConfigError, NfviError
from nfvi.optim import build_optimizer
from nfvi.runtime import rng_state, seed_everything, set_rng_state, set_threads
from nfvi.schedules import beta_at

#: samples of q_K for the histogram of density.png (when the flow has no inverse)
HIST_SAMPLES = 1_000_000
#: bins per axis of that histogram on (-4, 4)^2
HIST_BINS = 200
#: consecutive non-finite losses after which training stops
MAX_BAD_STEPS = 20


class TrainingDiverged(NfviError):
    """The loss stayed non-finite."""


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def _plain_config(cfg: Any) -> dict:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # type: ignore
    return dict(cfg)


def _resume_path(spec: str) -> Path:
    p = Path(spec)
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    return p


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (written after the checkpoint a resumed run starts from)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def _check_compatible(ckpt: dict, cfg: Any) -> None:
    c = ckpt.get("config", {})
    if ckpt.get("task") != "energy":
        raise CheckpointError(
            f"resume checkpoint is from task {ckpt.get('task')!r}, not energy; "
            "resume an energy run's checkpoints/last.pt"
        )
    mine = (cfg.flow.name, int(cfg.K), str(cfg.target.name))
    theirs = (c.get("flow", {}).get("name"), c.get("K"), c.get("target", {}).get("name"))
    if mine != theirs:
        raise CheckpointError(
            f"resume checkpoint has flow/K/target {theirs}, this run asks for {mine}; "
            "pass the same flow=, K= and target= as the run you resume"
        )


def run_energy(cfg: Any, run_dir: Path, device: torch.device, console: Console) -> dict:
    """Train, evaluate and draw one energy run; returns the summary written to summary.json."""
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tr = cfg.trainer
    set_threads(tr.num_threads)
    seed_everything(int(cfg.seed))

    try:
        target = get_target(cfg.target.name, float(cfg.target.envelope_std))
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{e.args[0]} (target=u1|u2|u3|u4, target.envelope_std > 0)") from e
    hparams = dict(getattr(cfg.flow, "hparams", None) or {})
    model = EnergyModel(target, cfg.flow.name, int(cfg.K), dim=2, hparams=hparams).to(device)
    optimizer = build_optimizer(model.parameters(), cfg.optim)

    step = 0
    resume = getattr(cfg, "resume", None)
    if resume:
        ckpt = load_checkpoint(_resume_path(str(resume)), map_location=device)
        _check_compatible(ckpt, cfg)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        console.print(f"resumed from {resume} at step {step}")

    plain_cfg = _plain_config(cfg)
    ckpt_path = run_dir / "checkpoints" / "last.pt"

    def save(at_step: int) -> None:
        save_checkpoint(
            ckpt_path,
            {
                "task": "energy",
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": at_step,
                "config": plain_cfg,
                "rng": rng_state(),
            },
        )

    max_steps = int(tr.max_steps)
    n = int(tr.mc_samples)
    log_every = int(tr.log_interval)
    ckpt_every = int(tr.val_interval)
    print_every = max(log_every, (max_steps // 10 // log_every) * log_every)
    schedule = _value(tr.beta_schedule)
    clip = tr.grad_clip
    console.print(
        f"energy: target={target.name} flow={cfg.flow.name} K={cfg.K} steps={max_steps} "
        f"mc_samples={n} optim={_value(cfg.optim.name)} lr={cfg.optim.lr} "
        f"beta={schedule}({tr.beta_start}, {tr.beta_steps}) device={device}"
    )

    model.train()
    t_train = time.perf_counter()
    acc_loss = acc_fe = 0.0
    acc_n = 0
    bad = 0
    beta = beta_at(step, schedule, float(tr.beta_start), int(tr.beta_steps))
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        while step < max_steps:
            beta = beta_at(step, schedule, float(tr.beta_start), int(tr.beta_steps))
            out = model.loss(n, beta)
            if not torch.isfinite(out.loss):
                bad += 1
                if bad >= MAX_BAD_STEPS:
                    raise TrainingDiverged(
                        f"the loss was not finite for {bad} steps in a row at step {step}; "
                        "lower optim.lr or set trainer.grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                step += 1
                continue
            bad = 0
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if clip is not None and clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
            optimizer.step()
            step += 1
            acc_loss += out.loss.item()
            acc_fe += out.free_energy.item()
            acc_n += 1
            if step % log_every == 0 or step == max_steps:
                rec = {
                    "step": step,
                    "loss": acc_loss / acc_n,
                    "free_energy": acc_fe / acc_n,
                    "beta": beta,
                    "lr": optimizer.param_groups[0]["lr"],
                    "elapsed": time.perf_counter() - t_start,
                }
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                acc_loss = acc_fe = 0.0
                acc_n = 0
                if tr.progress and (step % print_every == 0 or step == max_steps):
                    console.print(
                        f"step {step:>6}/{max_steps}  loss {rec['loss']:.4f}  "
                        f"F(beta=1) {rec['free_energy']:.4f}  beta {beta:.3f}  "
                        f"{rec['elapsed']:.1f}s"
                    )
            if step % ckpt_every == 0 and step < max_steps:
                save(step)
    train_seconds = time.perf_counter() - t_train
    save(step)

    # exact evaluation, with its own seed so it does not depend on the training RNG stream
    model.eval()
    lz = log_partition(target)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(cfg.eval.seed))
        est = estimate_kl(model, lz.log_z, int(cfg.eval.kl_samples))
        title = f"{target.name}, {cfg.flow.name} K={cfg.K}: KL = {est.kl:.3f} ± {est.kl_stderr:.3f}"
        density_method = plot_density(
            target,
            lz.log_z,
            model,
            run_dir / "density.png",
            title=title,
            grid=int(cfg.eval.grid),
            hist_samples=HIST_SAMPLES,
            hist_bins=HIST_BINS,
        )
        plot_samples(target, lz.log_z, model, run_dir / "samples.png", title=title)

    summary = {
        "task": "energy",
        "target": target.name,
        "flow": str(cfg.flow.name),
        "K": int(cfg.K),
        "steps": step,
        "kl": est.kl,
        "kl_stderr": est.kl_stderr,
        "log_z": lz.log_z,
        "ess_percent": est.ess_percent,
        "wall_seconds": time.perf_counter() - t_start,
        "train_seconds": train_seconds,
        "kl_samples": est.n,
        "kl_nonfinite_samples": est.nonfinite,
        "envelope": (
            None
            if target.envelope_std is None
            else f"z1^2 / (2 * {target.envelope_std}^2) added to U (Gaussian on z1)"
        ),
        "envelope_std": target.envelope_std,
        "log_z_quadrature": {
            "rule": "midpoint, uniform grid",
            "spacing": lz.spacing,
            "box": [list(lz.box[0]), list(lz.box[1])],
            "points": lz.points,
            "refinement_delta": lz.refinement_delta,
            "closed_form": lz.closed_form,
        },
        "density_method": density_method,
        "mc_samples": n,
        "optim": str(_value(cfg.optim.name)),
        "lr": float(cfg.optim.lr),
        "beta_schedule": f"{schedule}(start={tr.beta_start}, steps={tr.beta_steps})",
        "seed": int(cfg.seed),
        "device": str(device),
    }
    if not math.isfinite(est.kl):
        console.print("[yellow]warning: the KL estimate is not finite[/yellow]")
    atomic_write_json(run_dir / "summary.json", summary)
    console.print(
        f"KL(q||p) = {est.kl:.4f} ± {est.kl_stderr:.4f} nats  ln Z = {lz.log_z:.6f}  "
        f"ESS = {est.ess_percent:.1f}%  ({summary['wall_seconds']:.1f}s) -> {run_dir}"
    )
    return summary
