"""Train → sample → evaluate the default swiss-roll recipe, then every sampler at several budgets.

Prints, all measured in this one run:

* training: steps, wall time, final loss;
* the default sampler: NFE, CD, EMD, and each divided by its *floor* — the same metric between
  two independent exact draws of the roll, averaged over ``--pairs`` pairs;
* a table of every sampler (Euler–Maruyama, predictor–corrector, probability-flow ODE with
  Euler, Heun and adaptive RK45) at several NFE budgets on the same checkpoint, so the cheapest
  good sampler is known. Chamfer distance sees density only through coverage and is dominated
  by a few stray samples, so EMD (which measures proportions) is printed beside it everywhere.

Usage::

    python benchmarks/toy_swiss_roll.py                 # default recipe, 1000 steps, CPU
    python benchmarks/toy_swiss_roll.py --steps 2000 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from scoretut.sampler_comparison import best_within
from scoretut.runtime import device_from_arg
from scoretut.metrics import evaluate_samples, metric_floor
from scoretut.pipelines.toy2d import DEFAULT_RECIPE, fit, generate
from scoretut.sampling import steps_for_nfe

BUDGETS = (9, 19, 35, 99)  # NFE; Heun spends 2 per step except the last, so 2k − 1 is exact for it


def evaluate(model, sampler: str, n: int, seeds: list[int], **kw) -> dict:
    """Mean (and spread) of CD, EMD and their floor ratios over independent sampling seeds.

    Seed ``k`` draws both the samples and the exact target of the metric, so the spread
    includes the metric's own sampling noise (about 5% for CD at n = 10,000).
    """
    runs = []
    for seed in seeds:
        start = time.perf_counter()
        x, nfe, _ = generate(model, DEFAULT_RECIPE, n, sampler=sampler, seed=seed, **kw)
        runs.append({"nfe": nfe, "sample_s": time.perf_counter() - start,
                     **evaluate_samples(x, "swiss_roll", seed=seed)})  # fmt: skip
    out = {"sampler": sampler, "runs": runs}
    for key in ("nfe", "sample_s", "cd", "emd", "cd_ratio", "emd_ratio"):
        values = torch.tensor([float(r[key]) for r in runs], dtype=torch.float64)
        out[key] = float(values.mean())
        out[key + "_sd"] = float(values.std()) if len(runs) > 1 else 0.0
    out["nfe"] = max(r["nfe"] for r in runs)
    return out


def row(r: dict, label: str = "") -> str:
    return (f"{label or r['sampler']:<26} {r['nfe']:>5} {r['cd']:>8.4f} {r['cd_ratio']:>6.3f}±{r['cd_ratio_sd']:.3f} "
            f"{r['emd']:>8.4f} {r['emd_ratio']:>6.3f}±{r['emd_ratio_sd']:.3f} {r['sample_s']:>8.2f}")  # fmt: skip


HEADER = f"{'sampler':<26} {'NFE':>5} {'CD':>8} {'CD/floor':>12} {'EMD':>8} {'EMD/floor':>12} {'time s':>8}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    parser.add_argument("--n", type=int, default=10_000, help="samples per evaluation (default 10000)")
    parser.add_argument("--pairs", type=int, default=3, help="exact-draw pairs for the floors (default 3)")
    parser.add_argument("--eval-seeds", type=int, default=3, help="sampling seeds averaged per row (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--no-table", action="store_true", help="skip the sampler table")
    parser.add_argument("--json", default=None, help="also write all results to this JSON file")
    args = parser.parse_args(argv)
    device = device_from_arg(args.device)
    seeds = [args.seed + 1 + k for k in range(args.eval_seeds)]

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, load average {load:.2f}")
    floor = metric_floor("swiss_roll", n=args.n, pairs=args.pairs, seed=args.seed, n_chunks=args.n // 100)
    print(f"floors over {args.pairs} pairs of exact draws (n={args.n}): CD {floor['cd']:.4f} ± {floor['cd_std']:.4f}, "
          f"EMD {floor['emd']:.4f} ± {floor['emd_std']:.4f}")  # fmt: skip

    start = time.perf_counter()
    result = fit(DEFAULT_RECIPE, args.steps, args.seed, device=device)
    train_s = time.perf_counter() - start
    print(f"training: {result.step} steps in {train_s:.1f} s ({1000 * train_s / max(result.step, 1):.1f} ms/step), "
          f"final loss {result.history[-1][1]:.4f}")  # fmt: skip

    default = evaluate(result.ema, DEFAULT_RECIPE["sampler"], args.n, seeds, device=device)
    print(f"\ndefault recipe (EMA weights); mean ± sd over sampling seeds {seeds}:")
    print(HEADER)
    print(row(default, f"{DEFAULT_RECIPE['sampler']} {DEFAULT_RECIPE['grid']} {DEFAULT_RECIPE['steps']}"))
    raw = evaluate(result.model, DEFAULT_RECIPE["sampler"], args.n, seeds, device=device)
    print(row(raw, "  same, raw weights (no EMA)"))
    summary = {"steps": result.step, "train_s": train_s, "nfe": default["nfe"], "cd": default["cd"],
               "emd": default["emd"], "cd_ratio": default["cd_ratio"], "emd_ratio": default["emd_ratio"],
               "cd_ratio_sd": default["cd_ratio_sd"], "emd_ratio_sd": default["emd_ratio_sd"]}  # fmt: skip
    print("\nsummary: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))

    table = []
    if not args.no_table:
        print(f"\nevery sampler on the same checkpoint (EMA), ρ = 7 grid, seeds {seeds}:\n{HEADER}")
        for sampler in ("em", "pc", "ode_euler", "ode_heun"):
            for budget in BUDGETS:
                r = evaluate(result.ema, sampler, args.n, seeds, steps=max(1, steps_for_nfe(sampler, budget, saves_last=True)), grid="karras",
                             device=device)  # fmt: skip
                table.append(r)
                print(row(r), flush=True)
        for rtol in (1e-2, 1e-3):
            r = evaluate(result.ema, "ode_rk45", args.n, seeds, grid="karras", device=device, rtol=rtol, atol=rtol)
            table.append({**r, "rtol": rtol})
            print(row(r, f"ode_rk45 rtol={rtol:g}"), flush=True)
        # The floors are the reference: ratio 1 on both metrics. Ties in NFE go to the lower EMD ratio.
        best = best_within(table, {"cd_ratio": 1.0, "emd_ratio": 1.0}, 1.05, metrics=("cd_ratio", "emd_ratio"))
        if best:
            print(f"\ncheapest sampler within 1.05× of both floors: {best['sampler']} at {best['nfe']} NFE "
                  f"(CD ×{best['cd_ratio']:.3f}, EMD ×{best['emd_ratio']:.3f} of the floors)")  # fmt: skip
        else:
            print("\nno sampler reached 1.05× of both floors")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"floor": floor, "summary": summary, "default": default, "raw": raw, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
