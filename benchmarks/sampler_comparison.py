"""Quality against NFE for every sampler on one trained 2-D model, next to 1,000-step ancestral sampling.

Trains the default swiss-roll recipe of :mod:`scoretut.pipelines.toy2d` (an EDM-preconditioned denoiser
trained with the EDM loss, whose log-normal σ distribution does not involve ``σ_max``), then
samples it on the EDM SDE with ``σ_max`` tuned to the data (default 10 = 5 × the data's std of
about 2; 80 is sized for images) and runs :func:`scoretut.sampler_comparison.compare`:
Euler–Maruyama, predictor–corrector, probability-flow ODE Euler and Heun, DDIM (η = 0), the EDM
sampler with and without churn — all on the ρ = 7 grid, from one prior draw, scored with the
chunked Chamfer distance and EMD against one exact target draw — and DDPM ancestral sampling
with ``--ref-steps`` steps as the reference. Prints the table, the cheapest sampler within
1.1× of the reference on both metrics, whether the goal (≤ 20 NFE) is met, and EDM Heun at
19 NFE for several ``σ_max``; saves a plot of EMD and CD against NFE.

Usage::

    python benchmarks/sampler_comparison.py                         # CPU, ~5 min on 2 cores
    python benchmarks/sampler_comparison.py --train-steps 4000 --n 10000 --plot out.png
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from scoretut.sampler_comparison import SPECS, SamplerSpec, best_within, compare, plot, reference, table
from scoretut.sde import EDMSDE
from scoretut.pipelines.toy2d import DEFAULT_RECIPE, fit

BUDGETS = (5, 9, 13, 19, 20, 35, 99)
SIGMA_MAX_SWEEP = (5.0, 10.0, 20.0, 40.0, 80.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=2000, help="training steps (default 2000)")
    parser.add_argument("--sigma-max", type=float, default=10.0, help="σ_max of the sampling SDE (default 10)")
    parser.add_argument("--n", type=int, default=10_000, help="samples per cell, a multiple of 100 (default 10000)")
    parser.add_argument("--ref-steps", type=int, default=1000, help="ancestral reference steps (default 1000)")
    parser.add_argument("--churn", type=float, default=None, help="S_churn of the churn row (default: SPECS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="sampler_comparison.png", help="where to save the plot")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    recipe = DEFAULT_RECIPE
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print(f"recipe: {recipe['data']}, {recipe['param']} denoiser, {recipe['loss']} loss {recipe['loss_args']}, "
          f"σ_data {recipe['sigma_data']}; sampling SDE: EDM, σ_max {args.sigma_max:g}")  # fmt: skip

    start = time.perf_counter()
    result = fit(recipe, args.train_steps, args.seed)  # the default recipe's optimiser settings
    print(f"training: {args.train_steps} steps in {time.perf_counter() - start:.1f} s, "
          f"final loss {result.history[-1][1]:.4f}")  # fmt: skip
    net = result.ema.eval()
    sde = EDMSDE(sigma_min=recipe["sde_args"]["sigma_min"], sigma_max=args.sigma_max)  # σ(t) = t, s(t) = 1

    specs = list(SPECS)
    if args.churn is not None:
        specs[-1] = SamplerSpec(f"EDM Heun + churn {args.churn:g}", "edm", {"S_churn": args.churn})
    start = time.perf_counter()
    with torch.no_grad():
        ref = reference(sde, net, n=args.n, data=recipe["data"], steps=args.ref_steps, seed=args.seed)
        rows = compare(sde, net, BUDGETS, n=args.n, data=recipe["data"], specs=specs, seed=args.seed)
    print(f"sampling + metrics: {time.perf_counter() - start:.1f} s; "
          f"floors (exact draws): CD {ref['cd_floor']:.4f}, EMD {ref['emd_floor']:.4f}\n")  # fmt: skip
    print(table(rows, ref))
    best = best_within(rows, ref, 1.1)
    cheap = best_within([r for r in rows if r["nfe"] <= 20], ref, 1.1)
    print(f"\ncheapest within 1.1× of {ref['label']} ({ref['nfe']} NFE) on CD and EMD: "
          + (f"{best['label']} at {best['nfe']} NFE" if best else "none"))  # fmt: skip
    print("goal (≤ 20 NFE): " + (f"met by {cheap['label']} at {cheap['nfe']} NFE "
          f"(CD ×{cheap['cd'] / ref['cd']:.3f}, EMD ×{cheap['emd'] / ref['emd']:.3f})" if cheap else "not met"))  # fmt: skip
    heun = SamplerSpec("EDM Heun", "edm")
    with torch.no_grad():
        sweep = [(sm, compare(EDMSDE(recipe["sde_args"]["sigma_min"], sm), net, (19,), n=args.n,
                              data=recipe["data"], specs=[heun], seed=args.seed)[0]) for sm in SIGMA_MAX_SWEEP]  # fmt: skip
    print("\nEDM Heun, 10 steps (19 NFE), against σ_max: " + ", ".join(
        f"σ_max {sm:g}: CD ×{r['cd'] / ref['cd']:.3f} EMD ×{r['emd'] / ref['emd']:.3f}" for sm, r in sweep))  # fmt: skip
    fig = plot(rows, ref)
    fig.savefig(args.plot, dpi=120)
    print(f"plot saved to {args.plot}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": ref, "rows": rows, "sigma_max_sweep": sweep}, f, indent=1)


if __name__ == "__main__":
    main()
