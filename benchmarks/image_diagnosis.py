"""Why deterministic DDIM lags stochastic sampling on the CPU image model, over several training seeds.

Trains the AFHQ chapter's class-conditional DDPM (16×16 proxy, ``tiny`` U-Net, the settings of
:data:`CHAPTER`, which mirror ``book/afhq_ddpm.md``) with DDPM's plain ε-loss and with the
min-SNR-5 weighting, once per training seed, and prints from one run:

* per noise level ``t``: the model's ε-MSE per pixel value on noisy training images, beside that
  of the exact posterior mean of the training set
  (:func:`scoretut.pipelines.images.empirical_posterior_mean`, the floor of the training
  objective), and the model's x̂₀-MSE;
* FD_classifier of DDIM (η = 0) at 5, 10, 20 and 50 steps and of DDIM with η = 1 at 50 steps
  (and, with ``--ancestral K``, of ancestral sampling with K steps), over ``--n`` samples against
  the validation images, beside the train-vs-val floor at the same sample size;
* where along the 50-step trajectory determinism hurts: DDIM that is stochastic (η = 1) above
  ``t = τ`` and deterministic below it, for a few ``τ``;
* per recipe, the mean ± sd over the seeds of every FD cell.

Usage::

    python benchmarks/image_diagnosis.py --seeds 0 1 2           # both recipes, ~15 min on 2 cores
    python benchmarks/image_diagnosis.py --seeds 0 --recipes min_snr --ancestral 1000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from scoretut.data.images import ImageFolder, to_unit, write_proxy
from scoretut.fid import extract_features, fd_of_features, train_classifier
from scoretut.parametrisation import Prediction, noise_from_x0, x0_from_noise
from scoretut.pipelines.images import (PROXY_CPU_TRAINING, empirical_posterior_mean, fit, generate, guided_noise,
                                       make_sde)
from scoretut.sampling import ddim, run_steps
from scoretut.schedules import ddpm_timesteps

CHAPTER = {**PROXY_CPU_TRAINING, "log_every": 50}
"""The chapter's optimisation settings; ``steps`` and the loss weighting come from the command line."""
RECIPES = {"plain": None, "min_snr": 5.0}
"""Loss weighting by name: DDPM's plain ε-loss, or min-SNR-γ with γ = 5 (Hang et al. 2023)."""
T_GRID = (1, 10, 50, 100, 200, 300, 400, 500, 600, 800, 1000)
TAUS = (200, 400, 600)


@torch.no_grad()
def error_per_t(model, recipe, x0, y, seed=0):
    """Rows ``(t, ε-MSE model, ε-MSE exact, x̂₀-MSE model)`` per pixel value on the images ``x0``
    (the training set, whose exact posterior mean is the floor)."""
    sde = make_sde(recipe)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for t in T_GRID:
        a, s = float(sde.scale(torch.tensor(float(t)))), float(sde.std(torch.tensor(float(t))))
        eps = torch.randn(x0.shape, generator=gen)
        x_t = a * x0 + s * eps
        eps_hat = model(x_t, torch.full((len(x0),), float(t)), y)
        eps_ref = noise_from_x0(x_t, empirical_posterior_mean(x_t, a, s, x0), a, s)
        x0_hat = x0_from_noise(x_t, eps_hat, a, s)
        rows.append((t, float((eps_hat - eps).pow(2).mean()), float((eps_ref - eps).pow(2).mean()),
                     float((x0_hat - x0).pow(2).mean())))  # fmt: skip
    return rows


@torch.no_grad()
def split_ddim(model, recipe, n, labels, tau, seed=4, steps=50):
    """DDIM on ``steps`` respaced steps, with η = 1 while ``t > tau`` and η = 0 below."""
    sde = make_sde(recipe)
    ts = ddpm_timesteps(sde, steps)
    k = int((ts > tau).sum())
    gen = torch.Generator().manual_seed(seed)
    score = Prediction(sde, guided_noise(model, labels), "eps")
    x = torch.randn((n, 3, recipe["image_size"], recipe["image_size"]), generator=gen)
    x, _ = run_steps(ddim(sde, score, x, ts[: k + 1], generator=gen, clip_x0=1.0, eta=1.0))
    x, _ = run_steps(ddim(sde, score, x, ts[k:], generator=gen, clip_x0=1.0, eta=0.0))
    return x.clamp(-1, 1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--steps", type=int, default=800, help="training steps (the chapter's: 800)")
    p.add_argument("--n", type=int, default=300, help="samples per FD cell (default 300)")
    p.add_argument("--ancestral", type=int, default=0, help="also ancestral sampling with this many steps")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f}")
    root = write_proxy(tempfile.mkdtemp() + "/proxy", n_train=300, n_val=max(1, args.n // 3), size=16, seed=0)
    train_set, val_set = ImageFolder(root, "train", 16), ImageFolder(root, "val", 16)
    clf = train_classifier(train_set, steps=200, seed=0)
    n = len(val_set)
    f_val = extract_features(clf, val_set.images)
    perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(2))[:n]
    floor = fd_of_features(f_val, extract_features(clf, train_set.images[perm]))
    labels = val_set.labels  # the validation images' class mix
    x_train, y_train = to_unit(train_set.images), train_set.labels
    cells = [(f"DDIM {k}", dict(sampler="ddim", steps=k)) for k in (5, 10, 20, 50)]
    cells.append(("DDIM 50, η = 1", dict(sampler="ddim", steps=50, eta=1.0)))
    if args.ancestral:
        cells.append((f"ancestral {args.ancestral}", dict(sampler="ddpm", steps=args.ancestral)))
    print(f"{CHAPTER}, {args.steps} steps; FD_classifier over {n} samples, floor (train vs val) {floor:.3f}")
    table: dict[str, dict[str, list[float]]] = {}
    for name in args.recipes:
        for seed in args.seeds:
            start = time.perf_counter()
            result, recipe = fit(train_set, args.steps, seed=seed, decay_steps=args.steps, progress=False,
                                 min_snr_gamma=RECIPES[name], **CHAPTER)  # fmt: skip
            ema = result.ema.eval()
            print(f"\n== {name}, seed {seed}: trained in {time.perf_counter() - start:.0f} s")
            print("     t   ε-MSE model   ε-MSE exact   x̂₀-MSE model")
            for t, e, e_ref, x0e in error_per_t(ema, recipe, x_train[::3], y_train[::3]):
                print(f"  {t:4d}   {e:11.4f}   {e_ref:11.4f}   {x0e:12.4g}")
            fd = table.setdefault(name, {})
            for key, kw in cells:
                x = generate(ema, recipe, n, labels=labels, seed=4, **kw).x
                fd.setdefault(key, []).append(fd_of_features(f_val, extract_features(clf, x)))
            for tau in TAUS:
                x = split_ddim(ema, recipe, n, labels, tau)
                fd.setdefault(f"η = 1 above t = {tau}, 0 below", []).append(
                    fd_of_features(f_val, extract_features(clf, x)))
            print("  " + "; ".join(f"{k}: {v[-1]:.3f}" for k, v in fd.items()))
    print(f"\nFD_classifier, mean ± sd over seeds {args.seeds} (floor {floor:.3f}, {n} samples per cell)")
    keys = list(next(iter(table.values())))
    print(f"{'sampler':34s}" + "".join(f"{name:>22s}" for name in table))
    for key in keys:
        row = "".join(f"{np.mean(v[key]):>13.3f} ± {np.std(v[key], ddof=1) if len(v[key]) > 1 else 0:.3f}"
                      for v in table.values())  # fmt: skip
        print(f"{key:34s}{row}")


if __name__ == "__main__":
    main()
