"""The bridge chapter's models under the metric protocol: what makes their CD exceed the floor?

Trains the chapter's two bridges (moons at t = 0, and the roll at t = 0; same pairs, widths and
optimiser), carries 10,000 fresh points each way with the ODE at each ``--ode`` step count (and
the first run with the SDE at 100 Euler–Maruyama steps), and prints one JSON line per case:
CD and EMD ratios to the floor (100 chunks of 100 points), the two halves of CD divided by the
same halves for an exact draw (``to_data``: samples → data, strays; ``to_samples``: data →
samples, coverage), the number of strays (samples further from the data than 99.9 % of an
exact draw's points; about 10 expected) and their share of ``to_data``.

Usage (from the repository root)::

    python benchmarks/bridge_protocol.py --seed 0 --steps 1000 --ode 50,100   # the chapter
    python benchmarks/bridge_protocol.py --seed 0 --steps 2000 --decay        # longer, cosine decay
    python benchmarks/bridge_protocol.py --seed 1 --steps 1000                # a second seed
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from scoretut import bridge
from scoretut.data.toy2d import sample_dataset
from scoretut.metrics import chamfer_terms, evaluate_samples
from scoretut.train import TrainConfig, train

SIGMA, N = 0.5, 10_000


def decompose(out: torch.Tensor, target: str) -> dict[str, float]:
    """CD's two halves and the strays of ``out`` against ``evaluate_samples``' target draw."""
    ref = sample_dataset(target, N, seed=0)
    to_y, to_x = chamfer_terms(out, ref)
    to_y0, to_x0 = chamfer_terms(sample_dataset(target, N, seed=1), ref)
    far = to_y > to_y0.quantile(0.999)
    return {"to_data": float(to_y.mean() / to_y0.mean()), "to_samples": float(to_x.mean() / to_x0.mean()),
            "strays": int(far.sum()), "stray_share": float(to_y[far].sum() / to_y.sum())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run (chapter: 1000)")
    parser.add_argument("--decay", action="store_true", help="cosine learning-rate decay to 5 %% at --steps")
    parser.add_argument("--ode", default="50", help="comma-separated Heun step counts (chapter: 50)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    s = args.seed
    moons = sample_dataset("moons", 20_000, seed=100 + 10 * s)
    roll = sample_dataset("swiss_roll", 20_000, seed=101 + 10 * s)
    pairs = bridge.coupled_pairs(moons, roll, 25_600, batch_size=256, reg=2 * SIGMA**2, seed=s)
    sets = {"moons": sample_dataset("moons", N, seed=7 + 10 * s),
            "swiss_roll": sample_dataset("swiss_roll", N, seed=8 + 10 * s)}
    cfg = TrainConfig(steps=args.steps, batch_size=256, lr=2e-3, warmup=50, ema_decay=0.99, log_every=50,
                      progress=False, seed=s, decay_steps=args.steps if args.decay else None,
                      lr_floor=0.05 if args.decay else 0.0)  # fmt: skip
    runs = (("moons → roll", pairs, "moons", "swiss_roll"), ("roll → moons", pairs.flip(1), "swiss_roll", "moons"))
    for run, data, a, b in runs:
        torch.manual_seed(s)
        start = time.perf_counter()
        model = train(bridge.bridge_model(SIGMA, hidden=64, depth=3), bridge.BridgeLoss(), data, cfg).ema
        seconds = round(time.perf_counter() - start, 1)
        cases = [("ODE", int(k)) for k in args.ode.split(",")] + ([("SDE", 100)] if run == "moons → roll" else [])
        for dynamics, steps in cases:
            for reverse, src, target in ((False, a, b), (True, b, a)):
                out = bridge.transport(model, sets[src], reverse=reverse, stochastic=dynamics == "SDE", steps=steps,
                                       generator=torch.Generator().manual_seed(1))  # fmt: skip
                ev = evaluate_samples(out, target)
                row = {"seed": s, "train_steps": args.steps, "decay": args.decay, "run": run, "dynamics": dynamics,
                       "steps": steps, "carried": f"{src} → {target}", "cd_ratio": ev["cd_ratio"],
                       "emd_ratio": ev["emd_ratio"], **decompose(out, target), "train_seconds": seconds}  # fmt: skip
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
                                 ensure_ascii=False), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
