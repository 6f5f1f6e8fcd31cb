"""``nfvi eval``: rebuild a saved model and evaluate it into ``<run>/eval/<timestamp>/``."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from nfvi.checkpoint import atomic_write_json
from nfvi.evaluate import evaluate
from nfvi.figures import draw_reconstructions, draw_samples
from nfvi.models import FlowVAE
from nfvi.train import eval_inputs, load_data, versions


def run_eval(cfg, ckpt: dict, ckpt_path: Path, out_dir: Path, device: torch.device,
             console: Console) -> dict:
    data = load_data(cfg, console)
    trained_on = ckpt["config"]["dataset"].get("resolved_source")
    if trained_on not in (None, data.source):
        console.print(f"[bold yellow]WARNING:[/] the run trained on the {trained_on} data but "
                      f"{data.source} data is evaluated now")
    model = FlowVAE.from_config(cfg, data.train.shape[1]).to(device)
    model.load_state_dict(ckpt["model"])
    split = str(getattr(cfg.eval.split, "value", cfg.eval.split))
    # the same bits as the training run's own evaluation, so the numbers are comparable
    x = eval_inputs(cfg, data, split, device, cfg.eval.max_examples)
    console.print(f"evaluating {ckpt_path} on {len(x)} {split} points, "
                  f"S={cfg.eval.iw_samples}, device {device}")
    res = evaluate(model, x, cfg.eval.iw_samples, cfg.eval.chunk, cfg.eval.batch_size,
                   seed=cfg.eval.seed)
    draw_samples(model, data.image_shape, out_dir / "samples.png", seed=cfg.seed)
    draw_reconstructions(model, x, data.image_shape, out_dir / "reconstructions.png",
                         seed=cfg.seed)
    result = {
        "task": "vae",
        "checkpoint": str(ckpt_path),
        "step": ckpt["state"]["step"],
        "dataset": cfg.dataset.name,
        "data_source": data.source,
        "flow": cfg.flow.name,
        "K": cfg.K,
        "amortized": cfg.flow.amortized,
        "seed": cfg.seed,
        "split": split,
        f"{split}_neg_elbo": res.neg_elbo,
        f"{split}_neg_elbo_stderr": res.neg_elbo_stderr,
        f"{split}_nll": res.nll,
        f"{split}_nll_stderr": res.nll_stderr,
        "examples": res.examples,
        "iw_samples": res.iw_samples,
        "eval_seconds": res.seconds,
        "device": str(device),
        "versions": versions(),
    }
    atomic_write_json(out_dir / "eval.json", result)
    return result
