"""Flow matching on the swiss roll: straightness and CD/EMD (× floor) against NFE, in one run.

Trains what the flow-matching chapter trains — independent-coupling flow matching, OT-CFM
(minibatch OT pairs), and two rounds of reflow from the independent flow — plus the default
EDM recipe, then prints the straightness of each flow and a table of CD / EMD ratios to their
floors (10,000 samples, 100 chunks of 100) at 1, 2, 4, 8 and 16 NFE, Euler and Heun for the
flows, Heun on the ρ = 7 grid for EDM (N steps cost 2N − 1). Use ``--seed`` to check that the
chapter's numbers hold for another seed:

    python benchmarks/flow_matching.py --seed 1
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from scoretut import couplings, flow
from scoretut.pipelines import flow2d, toy2d
from scoretut.data.toy2d import sample_dataset
from scoretut.metrics import evaluate_samples
from scoretut.sampling import steps_for_nfe

BUDGETS = (1, 2, 4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per flow and for EDM")
    parser.add_argument("--reflow-steps", type=int, default=600)
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--ode-steps", type=int, default=16, help="Heun steps behind reflow pairs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    print(f"load average {os.getloadavg()[0]:.2f}; seed {args.seed}")
    seed = args.seed
    roll = sample_dataset("swiss_roll", 100_000, seed=seed)
    models = {"independent": flow2d.fit(roll, args.steps, seed=seed).ema}
    pairs = couplings.coupled_pairs(flow.noise(args.pairs, seed + 2, device=roll.device), roll, args.pairs,
                                    batch_size=256, seed=seed)  # fmt: skip
    models["OT-CFM"] = flow2d.fit(pairs, args.steps, seed=seed).ema
    base = models["independent"]
    for k in (1, 2):
        rp = flow.reflow_pairs(base, args.pairs, seed=seed + 10 * k, steps=args.ode_steps)
        base = models[f"{k}-reflow"] = flow2d.fit(rp, args.reflow_steps, seed=seed + k, init=base).ema
    edm = toy2d.fit(steps=args.steps, seed=seed).ema
    x_s = flow.noise(2_000, seed + 3)
    for name, model in models.items():
        print(f"straightness {name:>12}: {flow.straightness(model, x_s, steps=50):.4f}")
    print(f"{'':12} {'solver':6} " + " ".join(f"{'NFE ' + str(b):>12}" for b in BUDGETS) + "   (CD / EMD × floor)")
    runs = [(m, s) for m in models for s in ("euler", "heun")] + [("EDM recipe", "heun")]
    floors = None
    for name, solver in runs:
        cells = []
        for nfe in BUDGETS:
            if name != "EDM recipe" and steps_for_nfe(flow.SOLVERS[solver], nfe) == 0:  # no step fits the budget
                cells.append(f"{'–':>12}")
                continue
            if name == "EDM recipe":
                x = toy2d.generate(edm, toy2d.DEFAULT_RECIPE, 10_000, steps=steps_for_nfe("ode_heun", nfe, saves_last=True), seed=seed,
                                   device=edm_device(edm)).x  # fmt: skip
            else:
                x = flow2d.generate(models[name], flow2d.DEFAULT_RECIPE, 10_000, nfe=nfe, solver=solver, seed=seed).x
            ev = evaluate_samples(x.cpu(), "swiss_roll", seed=seed)
            floors = floors or (ev["cd_floor"], ev["emd_floor"])
            cells.append(f"{ev['cd_ratio']:5.2f} / {ev['emd_ratio']:4.2f}")
        print(f"{name:12} {solver:6} " + " ".join(f"{c:>12}" for c in cells), flush=True)
    print(f"floors: CD {floors[0]:.4f}, EMD {floors[1]:.4f}; {time.perf_counter() - start:.0f} s")


def edm_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


if __name__ == "__main__":
    main()
