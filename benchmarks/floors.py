"""Print the metric floors of the HelloScore protocol: CD and EMD between exact draws.

For swiss_roll and moons, ``--pairs`` pairs of independent exact draws of ``--n`` points
(seeds ``seed + 1 + 2i`` and ``seed + 2 + 2i``) are compared with the chunked Chamfer distance and
EMD of :mod:`scoretut.metrics`; then ``N(0, I)`` samples (what an untrained sampler starts from)
are compared with the roll. Usage::

    python benchmarks/floors.py --seed 0      # after `pip install -e .`, or with PYTHONPATH=.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from scoretut.data.toy2d import sample_dataset
from scoretut.metrics import chamfer_distance, emd


def _row(label: str, x: torch.Tensor, y: torch.Tensor, n_chunks: int) -> tuple[float, float]:
    start = time.perf_counter()
    cd, e = chamfer_distance(x, y, n_chunks), emd(x, y, n_chunks)
    print(f"{label:<42} {cd:>9.4f} {e:>9.4f} {time.perf_counter() - start:>7.2f}s")
    return cd, e


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--n", type=int, default=10000, help="points per draw (default 10000)")
    parser.add_argument("--pairs", type=int, default=3, help="independent pairs per data set (default 3)")
    parser.add_argument("--chunks", type=int, default=100, help="chunks of the protocol (default 100)")
    args = parser.parse_args(argv)

    print(f"n={args.n}, chunks={args.chunks} of {args.n // args.chunks}, seed={args.seed}")
    print(f"{'comparison':<42} {'CD':>9} {'EMD':>9} {'time':>8}")
    for name in ("swiss_roll", "moons"):
        results = []
        for i in range(args.pairs):
            s1, s2 = args.seed + 1 + 2 * i, args.seed + 2 + 2 * i
            x, y = sample_dataset(name, args.n, s1), sample_dataset(name, args.n, s2)
            results.append(_row(f"{name} seed {s1} vs seed {s2}", x, y, args.chunks))
        mean, std = np.mean(results, axis=0), np.std(results, axis=0, ddof=1 if args.pairs > 1 else 0)
        print(f"{name + ' floor (mean ± std)':<42} {mean[0]:>9.4f} {mean[1]:>9.4f}   ± {std[0]:.4f} / {std[1]:.4f}")

    roll = sample_dataset("swiss_roll", args.n, args.seed)
    for i in range(args.pairs):
        noise = torch.randn(args.n, 2, generator=torch.Generator().manual_seed(args.seed + i))
        _row(f"N(0,I) seed {args.seed + i} vs swiss_roll seed {args.seed}", noise, roll, args.chunks)


if __name__ == "__main__":
    main()
