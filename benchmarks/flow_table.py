"""The README's flow table: parameters and measured cost per layer of every registered flow.

For each flow in :data:`nfvi.flows.FLOWS`, built with its ``configs/flow/<name>.yaml``
hyperparameters (as ``nfvi train flow=<name>`` composes them) at D = 40:

* parameters per layer, amortized (the head on 400 encoder features included) and global:
  a stack's parameter count divided by its length ``K``;
* cost per layer: the median wall time of one forward + backward pass of a ``K``-layer stack
  on ``z [100, 40]`` (and ``context [100, 400]`` amortized), divided by ``K``, on one CPU
  thread, amortized and global, in milliseconds.

Prints a Markdown table (the README's row order).

    python benchmarks/flow_table.py [--repeats 30] [--K 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

DIM, FEATURES, BATCH = 40, 400, 100
#: the README's row order; flows registered beyond these follow, sorted
ORDER = [
    "planar", "radial", "nice", "realnvp", "spline", "householder", "iaf",
    "sylvester_orthogonal", "sylvester_householder", "sylvester_triangular",
]


def flow_hparams(name: str) -> dict:
    """The composed ``flow.hparams`` of ``flow=<name>`` ({} for a flow without a config)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException
    from omegaconf import OmegaConf

    from nfvi.config import config_dir, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            cfg = compose("config", overrides=[f"flow={name}"])
        except MissingConfigException:
            return {}
    return OmegaConf.to_container(cfg.flow.hparams, resolve=True)


def cost_ms(flow: torch.nn.Module, context: torch.Tensor | None, repeats: int) -> float:
    """Median milliseconds of one forward + backward pass on ``z [BATCH, DIM]``."""
    z = torch.randn(BATCH, DIM)
    times = []
    for i in range(repeats + 3):  # the first three warm up
        flow.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        z_k, log_abs_det = flow(z, context)
        (z_k.square().sum() + log_abs_det.sum()).backward()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(name: str, K: int, repeats: int) -> dict:
    from nfvi.flows import FLOWS, make_flow

    hparams = flow_hparams(name)
    row = {"name": name, "inverse": FLOWS[name].has_inverse}
    for amortized in (True, False):
        torch.manual_seed(0)
        flow = make_flow(name, DIM, K, amortized=amortized, context_dim=FEATURES, **hparams)
        context = torch.randn(BATCH, FEATURES) if amortized else None
        key = "amortized" if amortized else "global"
        row[f"params_{key}"] = sum(p.numel() for p in flow.parameters()) / K
        row[f"ms_{key}"] = cost_ms(flow, context, repeats) / K
    return row


def fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 1 else f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed passes per flow and mode")
    parser.add_argument("--K", type=int, default=4, help="layers in the timed stack")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from nfvi.flows import FLOWS

    print(
        f"| flow | inverse | params per layer, amortized (D={DIM}, {FEATURES} features) / global "
        f"| cost per layer, amortized / global (D={DIM}, batch {BATCH}, fwd+bwd, 1 CPU thread) |"
    )
    print("|---|---|---|---|")
    for name in [n for n in ORDER if n in FLOWS] + sorted(set(FLOWS) - set(ORDER)):
        r = measure(name, args.K, args.repeats)
        params = f"{r['params_amortized']:,.0f} / {r['params_global']:,.0f}"
        cost = f"{fmt_ms(r['ms_amortized'])} / {fmt_ms(r['ms_global'])} ms"
        print(f"| `{name}` | {'yes' if r['inverse'] else 'no'} | {params} | {cost} |", flush=True)


if __name__ == "__main__":
    main()
