"""Fréchet distance against NFE for every sampler on one image DDPM, next to 1,000-step ancestral sampling.

Trains the class-conditional DDPM of ``scoretut.pipelines.images`` on the offline proxy data set (or
loads ``--ckpt``), then runs :func:`scoretut.sampler_comparison.compare` on it: DDIM (η = 0 with and without
clipping the estimate x̂₀ to [−1, 1], η = 1), probability-flow ODE Euler and Heun, the EDM sampler (Heun, with and without churn) and Euler–Maruyama on
the DDPM's own integer time grid (``scoretut.schedules.ddpm_timesteps``), all from one draw of
starting noise with the same labels, against DDPM ancestral sampling with 1,000 steps. Quality
is the offline **FD_classifier** (the Fréchet distance in the features of a small classifier
trained on the same data set; not FID) of the samples against the validation images; the floor
is the same distance for as many training images. Prints the table, the cheapest sampler within
1.1× of the reference and whether that is at ≤ 35 NFE (the goal for images).

Usage::

    python benchmarks/image_sampler_comparison.py                       # CPU: the AFHQ chapter's optimiser settings, ~30 min
    python benchmarks/image_sampler_comparison.py --only ddim           # only the DDIM rows, ~8 min
    python benchmarks/image_sampler_comparison.py --min-snr-gamma 0     # DDPM's plain ε-loss instead
    python benchmarks/image_sampler_comparison.py --size 64 --net small --train-steps 20000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from scoretut.sampler_comparison import SamplerSpec, best_within, compare, reference, table
from scoretut.runtime import device_from_arg
from scoretut.data.images import ImageFolder, write_proxy
from scoretut.fid import extract_features, fd_of_features, train_classifier
from scoretut.pipelines.images import load
from scoretut.pipelines.images import PROXY_CPU_TRAINING, fit, guided_noise, label_tensor, make_sde
from scoretut.parametrisation import Prediction
from scoretut.schedules import ddpm_timesteps

BUDGETS = (10, 20, 35, 50)
SPECS = (
    SamplerSpec("DDIM (η = 0)", "ddim", {"clip_x0": 1.0}),
    SamplerSpec("DDIM (η = 0), no x̂₀ clipping", "ddim"),
    SamplerSpec("DDIM (η = 1)", "ddim", {"eta": 1.0, "clip_x0": 1.0}),
    SamplerSpec("Euler–Maruyama", "em"),
    SamplerSpec("PF-ODE Euler", "ode_euler"),
    SamplerSpec("PF-ODE Heun", "ode_heun"),
    SamplerSpec("EDM Heun", "edm"),
    SamplerSpec("EDM Heun + churn", "edm", {"S_churn": 10.0}),
)
REFERENCE = SamplerSpec("ancestral (DDPM)", "ddpm", {"clip_x0": 1.0})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="AFHQ-layout folder (default: write the proxy to a temp dir)")
    parser.add_argument("--ckpt", default=None, help="a trained `scoretut ddpm train` checkpoint (skips training)")
    parser.add_argument("--out", default=None, help="keep the model trained here as OUT/ckpt.pt (reuse with --ckpt)")
    parser.add_argument("--size", type=int, default=16, help="image side when training here (default 16)")
    parser.add_argument("--net", default="tiny", help="U-Net size when training here: full, small, tiny")
    parser.add_argument("--train-steps", type=int, default=800, help="training steps (default 800, the chapter's)")
    parser.add_argument("--n", type=int, default=300, help="samples per cell (default 300)")
    parser.add_argument("--ref-steps", type=int, default=1000, help="ancestral reference steps (default 1000)")
    parser.add_argument("--min-snr-gamma", type=float, default=5.0,
                        help="min-SNR-γ loss weighting (default 5, the chapter's; 0: DDPM's plain ε-loss)")
    parser.add_argument("--only", default=None, help="run only the samplers whose name starts with this, e.g. ddim")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)
    device = device_from_arg(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip

    model, recipe = load(args.ckpt) if args.ckpt else (None, None)
    size = recipe["image_size"] if args.ckpt else args.size
    root = args.data or write_proxy(tempfile.mkdtemp() + "/proxy", n_train=1000, n_val=args.n, size=size,
                                    seed=args.seed)  # fmt: skip
    train_set, val_set = ImageFolder(root, "train", size), ImageFolder(root, "val", size)
    if not args.ckpt:
        start = time.perf_counter()
        result, recipe = fit(train_set, args.train_steps, **{**PROXY_CPU_TRAINING, "net": args.net},
                             decay_steps=args.train_steps, seed=args.seed, device=device, progress=False,
                             min_snr_gamma=args.min_snr_gamma or None,
                             out_dir=args.out)  # fmt: skip
        model = result.ema
        print(f"training: {args.train_steps} steps of the {args.net} U-Net at {size}×{size}, "
              f"min-SNR γ {args.min_snr_gamma} in "
              f"{time.perf_counter() - start:.1f} s, final loss {result.history[-1][1]:.2f}")  # fmt: skip
    model = model.to(device).eval()

    clf = train_classifier(train_set, steps=500, seed=args.seed, device=device)
    f_val = extract_features(clf, val_set.images)
    n = min(args.n, len(val_set))
    floor = fd_of_features(f_val, extract_features(clf, train_set.images[torch.randperm(len(train_set))[:n]]))

    def evaluate(x: torch.Tensor) -> dict[str, float]:
        return {"fd": fd_of_features(f_val, extract_features(clf, x.clamp(-1, 1).cpu()))}

    sde = make_sde(recipe)
    gen = torch.Generator(device).manual_seed(args.seed)
    labels = label_tensor(recipe, None, n)  # the classes in turn; None for an unconditional model
    score = Prediction(sde, guided_noise(model, None if labels is None else labels.to(device)), "eps")
    x = torch.randn((n, 3, size, size), generator=gen, device=device)
    start = time.perf_counter()
    with torch.no_grad():
        ref = reference(sde, score, x=x, evaluate=evaluate, steps=args.ref_steps, seed=args.seed,
                        grid=ddpm_timesteps, spec=REFERENCE)  # fmt: skip
        specs = [s for s in SPECS if args.only is None or s.label.lower().startswith(args.only.lower())]
        rows = compare(sde, score, BUDGETS, x=x, evaluate=evaluate, specs=specs, seed=args.seed,
                       grid=ddpm_timesteps)  # fmt: skip
    print(f"sampling + FD: {time.perf_counter() - start:.1f} s; {n} samples per cell; "
          f"FD_classifier floor (training vs validation images): {floor:.3f}\n")  # fmt: skip
    print(table(rows, ref, metrics=("fd",)))
    best = best_within(rows, ref, 1.1, metrics=("fd",))
    print(f"\ncheapest within 1.1× of {ref['label']} ({ref['nfe']} NFE) on FD_classifier: "
          + (f"{best['label']} at {best['nfe']} NFE" if best else "none"))  # fmt: skip
    cheap = best_within([r for r in rows if r["nfe"] <= 35], ref, 1.1, metrics=("fd",))
    print("goal (≤ 35 NFE): " + (f"met by {cheap['label']} at {cheap['nfe']} NFE "
          f"(FD ×{cheap['fd'] / ref['fd']:.3f})" if cheap else "not met"))  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reference": ref, "rows": rows, "floor": floor}, f, indent=1)


if __name__ == "__main__":
    main()
