"""Can a flow fit the posterior of a fixed, trained decoder? (issue 10: defect or budget?)

Takes a trained VAE run (its best.pt), keeps its decoder frozen (so the model p(x, z) and its
true -ln p(x) stay fixed) and trains, for ``--steps`` updates at beta = 1 on the training split,
a posterior: the run's own encoder (``--flow none``, the control: how much of the gap is the
encoder's unfinished training) or the run's encoder plus a fresh flow of ``--K`` layers
(``--train head``: only the flow's parameters learn; ``--train encoder``: encoder and flow).
Then it evaluates -ELBO and the importance-weighted NLL on the run's test bits, and prints the
gap -ELBO - NLL beside the run's own: with the decoder fixed, a richer posterior can only
shrink the gap, so a flow that does not is a flow that cannot fit the posterior.

    python benchmarks/fit_posterior.py RUN_DIR --flow planar --K 40 --train encoder \
        --steps 2000 --examples 1000 --iw 500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf
from rich.console import Console

from nfvi.checkpoint import load_checkpoint
from nfvi.config import compose_config, from_saved, typed
from nfvi.data import binarize
from nfvi.schedules import lr_factor
from nfvi.vae.evaluate import evaluate
from nfvi.vae.model import FlowVAE
from nfvi.vae.run import Batches, eval_inputs, load_data


def shipped_flow(name: str):
    """The ``flow`` group of ``nfvi train flow=NAME`` (its hparams and head settings)."""
    return compose_config(f"flow={name}").flow


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--flow", default="planar",
                    help="a flow name, none (encoder only) or keep (the run's own flow)")
    ap.add_argument("--K", type=int, default=40)
    ap.add_argument("--train", choices=["head", "encoder"], default="encoder")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                    help="cosine: from --lr to 0 over --steps (the default trainer's decay)")
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--iw", type=int, default=500)
    ap.add_argument("--identity", action="store_true",
                    help="zero the head's weights and u's bias: each layer starts as the identity")
    ap.add_argument("--override", nargs="*", default=[], help="flow.* config overrides")
    a = ap.parse_args()
    torch.set_num_threads(1)

    ckpt = load_checkpoint(a.run / "checkpoints" / "best.pt")
    base_cfg = typed(from_saved(ckpt["config"]))
    data = load_data(base_cfg, Console(quiet=True))
    dev = torch.device("cpu")
    x_test = eval_inputs(base_cfg, data, "test", dev, a.examples)

    cfg_dict = from_saved(ckpt["config"])
    if a.flow == "keep":  # the run's own trained flow, trained further
        own = ckpt["model"]
    elif a.flow != "none":
        if a.flow != cfg_dict.flow.name:  # another flow: its shipped config (flow=NAME)
            cfg_dict.flow = shipped_flow(a.flow)
        cfg_dict.K = a.K
        for item in a.override:
            key, value = item.split("=", 1)
            OmegaConf.update(cfg_dict, key, yaml.safe_load(value), force_add=True)
    cfg = typed(cfg_dict)
    base = FlowVAE.from_config(base_cfg, x_test.shape[1], data.image_shape)
    base.load_state_dict(ckpt["model"])
    torch.manual_seed(cfg.seed + 100)
    model = FlowVAE.from_config(cfg, x_test.shape[1], data.image_shape)
    # the run's encoder and decoder; only the flow is new
    if a.flow != "keep":
        own = {k: v for k, v in ckpt["model"].items() if not k.startswith("flow.")}
    missing = model.load_state_dict(own, strict=False)
    assert all(k.startswith("flow.") for k in missing.missing_keys), missing

    if a.identity and a.flow != "none" and model.flow.source is not None:
        with torch.no_grad():
            model.flow.source.head.weight.zero_()
            off = 0
            for shapes in model.flow.source.shapes:
                for name, shape in shapes.items():
                    n = int(torch.Size(shape).numel())
                    if name == "u":
                        model.flow.source.head.bias[off:off + n] = 0.0
                    off += n
    for p in model.parameters():
        p.requires_grad_(False)
    learn = list(model.flow.parameters())
    if a.train == "encoder" or a.flow == "none":
        learn += [p for n, p in model.named_parameters() if n.startswith(("encoder.", "q_"))]
    for p in learn:
        p.requires_grad_(True)
    opt = torch.optim.Adam(learn, lr=a.lr)

    train_x = data.train
    batches = Batches(len(train_x), 100, cfg.seed + 7)
    gen = torch.Generator().manual_seed(cfg.seed + 8)
    start = time.perf_counter()
    for step in range(a.steps):
        for group in opt.param_groups:
            group["lr"] = a.lr * lr_factor(step, a.lr_schedule, a.steps)
        x = binarize(train_x[batches.take()], str(cfg.dataset.binarize), generator=gen,
                     threshold=cfg.dataset.threshold)
        loss = model.elbo(x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - start

    before = evaluate(base, x_test, a.iw, 500, 100, seed=0)
    after = evaluate(model, x_test, a.iw, 500, 100, seed=0)
    d_gap = (torch.tensor(after.per_example["neg_elbo"]) - torch.tensor(after.per_example["nll"])
             - torch.tensor(before.per_example["neg_elbo"])
             + torch.tensor(before.per_example["nll"]))
    d_nll = torch.tensor(after.per_example["nll"]) - torch.tensor(before.per_example["nll"])
    n = d_gap.numel()
    row = {
        "run": str(a.run), "flow": a.flow, "K": cfg.K,
        "train": a.train if a.flow != "none" else "encoder", "steps": a.steps, "lr": a.lr,
        "lr_schedule": a.lr_schedule,
        "override": a.override, "identity": a.identity,
        "run_neg_elbo": before.neg_elbo, "run_nll": before.nll,
        "run_gap": before.neg_elbo - before.nll,
        "neg_elbo": after.neg_elbo, "nll": after.nll, "gap": after.neg_elbo - after.nll,
        "d_gap": d_gap.mean().item(), "d_gap_se": (d_gap.std() / n**0.5).item(),
        "d_nll": d_nll.mean().item(), "d_nll_se": (d_nll.std() / n**0.5).item(),
        "train_seconds": train_s, "examples": n, "iw": a.iw,
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
