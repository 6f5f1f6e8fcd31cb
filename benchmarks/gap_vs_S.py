"""How the measured gap -ELBO - NLL depends on the number of importance samples S (issue 10).

The importance-weighted estimate ``NLL_S = -ln (1/S) sum_s p(x, z_s) / q(z_s | x)`` is an upper
bound on ``-ln p(x)`` whose bias falls with S and with the quality of the proposal q (Burda et
al. 2016): to first order ``E[NLL_S] + ln p(x) = Var[w] / (2 S E[w]^2)``, ``w = p(x, z) / q(z|x)``.
So the measured gap ``-ELBO - NLL_S`` *under*-states ``KL(q || p(z|x))`` by that bias, and by
more for a worse q: comparing a diagonal Gaussian (K = 0) with a flow at one finite S favours
the Gaussian. This script evaluates trained runs (their ``best.pt``) on the same first
``--examples`` test images (each run's own fixed test bits, so pair runs of the same seed) at
several S, with the same IS seed, and prints for each run -ELBO, NLL_S and the gap at each S,
the paired gap difference to the first run at each S, and a Richardson extrapolation of NLL to
S = infinity from the two largest S, assuming the first-order ``c / S`` bias (a guide, not a
bound: with heavy-tailed weights the bias falls slower than 1/S, and the extrapolation then
still under-states the gap).

    python benchmarks/gap_vs_S.py K0_RUN K40_RUN [more runs] --S 200 1000 5000 --examples 500
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console

from nfvi.checkpoint import load_checkpoint
from nfvi.config import from_saved, typed
from nfvi.vae.evaluate import evaluate
from nfvi.vae.run import build_model, eval_inputs, load_data


def per_point(run: Path, S: list[int], examples: int, chunk: int) -> tuple[str, dict]:
    """(label, {"neg_elbo": [N], S: nll [N] for each S}) of the run's best checkpoint."""
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    cfg = typed(from_saved(ckpt["config"]))
    data = load_data(cfg, Console(quiet=True))
    x = eval_inputs(cfg, data, "test", torch.device("cpu"), examples)
    model = build_model(cfg, data)
    model.load_state_dict(ckpt["model"])
    model.eval()
    out: dict = {}
    for s in S:
        res = evaluate(model, x, s, min(s, chunk), 100, seed=0)
        out["neg_elbo"] = torch.tensor(res.per_example["neg_elbo"])
        out[s] = torch.tensor(res.per_example["nll"])
    flow = "none" if cfg.K == 0 else cfg.flow.name
    return f"{flow} K={cfg.K} seed={cfg.seed}", out


def mean_se(v: torch.Tensor) -> str:
    return f"{v.mean().item():+.3f} ± {(v.std() / v.numel() ** 0.5).item():.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="run directories; the first is the baseline")
    ap.add_argument("--S", type=int, nargs="+", default=[200, 1000, 5000])
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    S = sorted(a.S)
    start = time.perf_counter()
    results = [per_point(r, S, a.examples, a.chunk) for r in a.runs]
    s1, s2 = S[-2:] if len(S) > 1 else (S[-1], S[-1])

    def extrapolated(v: dict) -> torch.Tensor:
        return (s2 * v[s2] - s1 * v[s1]) / (s2 - s1) if s2 != s1 else v[s2]

    head = ["run", "-ELBO"] + [f"NLL S={s}" for s in S] + [f"NLL S=inf (from {s1}, {s2})"]
    head += [f"gap S={s}" for s in S] + ["gap S=inf"]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for label, v in results:
        cells = [label, f"{v['neg_elbo'].mean():.2f}"]
        cells += [f"{v[s].mean():.2f}" for s in S] + [f"{extrapolated(v).mean():.2f}"]
        cells += [f"{(v['neg_elbo'] - v[s]).mean():.3f}" for s in S]
        cells += [f"{(v['neg_elbo'] - extrapolated(v)).mean():.3f}"]
        print("| " + " | ".join(cells) + " |")
    base_label, base = results[0]
    print(f"\npaired against {base_label} (per test point, mean ± standard error):\n")
    head = ["run"] + [f"gap diff S={s}" for s in S] + ["gap diff S=inf"]
    head += [f"NLL diff S={s}" for s in S]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for label, v in results[1:]:
        gap = {s: (v["neg_elbo"] - v[s]) - (base["neg_elbo"] - base[s]) for s in S}
        gap_inf = (v["neg_elbo"] - extrapolated(v)) - (base["neg_elbo"] - extrapolated(base))
        cells = [label] + [mean_se(gap[s]) for s in S] + [mean_se(gap_inf)]
        cells += [mean_se(v[s] - base[s]) for s in S]
        print("| " + " | ".join(cells) + " |")
    print(f"\n{a.examples} test images, IS seed 0, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
