"""``scoretut toy …``: the 2-D pipeline (:mod:`scoretut.pipelines.toy2d`) from the command line.

::

    scoretut toy train  --data swiss_roll --steps 2000 --seed 0 --out runs/roll
    scoretut toy sample --ckpt runs/roll/ckpt.pt --n 10000 --seed 0 --out samples.npy [--sampler NAME --nfe N]
    scoretut toy eval   --samples samples.npy --data swiss_roll
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from scoretut.cli.common import Parser, add_common, positive, writable_dir
from scoretut.errors import UsageError


def add_parsers(groups) -> None:
    """Add the ``toy`` group to the ``scoretut`` parser (``groups`` = its sub-parsers)."""
    from scoretut.pipelines.toy2d import DEFAULT_RECIPE
    from scoretut.train import DEFAULT_TRAINING as T

    toy = groups.add_parser("toy", help="2D toy pipeline: train, sample, evaluate")
    cmds = toy.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    tr = cmds.add_parser("train", help="train a score model on a 2D data set (best recipe by default)")
    tr.add_argument("--data", default=DEFAULT_RECIPE["data"], help="swiss_roll, moons, eight_gaussians, gmm, ...")
    tr.add_argument("--steps", type=positive(int), default=1000, help="optimiser steps (default 1000)")
    tr.add_argument("--out", required=True, type=Path, help="run directory; the checkpoint is OUT/ckpt.pt")
    tr.add_argument("--sde", default=None, help="edm, vp, subvp, ve, ou (default edm; vp for score losses)")
    tr.add_argument("--loss", default=None, help="edm, dsm, ism, ssm (default edm)")
    tr.add_argument("--param", default=None, help="edm (denoiser preconditioning) or score (net/std)")
    tr.add_argument("--batch", type=positive(int), default=T["batch_size"], help=f"batch size (default {T['batch_size']})")
    tr.add_argument("--lr", type=positive(float), default=T["lr"], help=f"peak learning rate (default {T['lr']})")
    tr.add_argument("--decay-steps", type=positive(int), default=T["decay_steps"],
                    help=f"step at which the cosine learning-rate decay ends (default {T['decay_steps']})")
    tr.add_argument("--ema-decay", type=float, default=T["ema_decay"], help=f"EMA decay of the weights (default {T['ema_decay']})")
    tr.add_argument("--hidden", type=positive(int), default=DEFAULT_RECIPE["net"]["hidden"], help="MLP width")
    tr.add_argument("--depth", type=positive(int), default=DEFAULT_RECIPE["net"]["depth"], help="residual blocks")
    tr.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints (default 500)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    add_common(tr)

    sa = cmds.add_parser("sample", help="draw samples from a trained checkpoint into an .npy file")
    sa.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by 'scoretut toy train'")
    sa.add_argument("--n", type=positive(int), default=10_000, help="number of samples (default 10000)")
    sa.add_argument("--out", required=True, type=Path, help="output .npy file, shape (n, 2) float32")
    sa.add_argument("--sampler", default=None, help="em, pc, ode_euler, ode_heun, ode_rk45 (default: the recipe's)")
    sa.add_argument("--nfe", type=positive(int), default=None, help="budget of network evaluations")
    sa.add_argument("--steps", type=positive(int), default=None, help="sampler steps (instead of --nfe)")
    sa.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the EMA")
    add_common(sa)

    ev = cmds.add_parser("eval", help="Chamfer and earth mover's distance of samples against the data")
    ev.add_argument("--samples", required=True, type=Path, help=".npy file of shape (n, 2)")
    ev.add_argument("--data", default="swiss_roll", help="the data set the samples should match")
    ev.add_argument("--seed", type=int, default=0, help="seed of the target draw")


def _recipe_from_args(args) -> dict:
    """The default recipe with the command-line choices applied.

    Choosing a score loss (dsm/ism/ssm) switches to the classic setting those losses are
    written for: a network that predicts the score, the VP SDE unless ``--sde`` says otherwise,
    and Euler–Maruyama sampling over a uniform grid.
    """
    from scoretut.pipelines.toy2d import DEFAULT_RECIPE, recipe_with

    overrides: dict = {"data": args.data, "net": {"hidden": args.hidden, "depth": args.depth}}
    loss = args.loss or DEFAULT_RECIPE["loss"]
    if loss != "edm":
        overrides.update(loss=loss, loss_args={}, param=args.param or "score", sde="vp", sde_args={},
                         sampler="em", grid="uniform", steps=500)  # fmt: skip
    elif args.param:
        overrides["param"] = args.param
    if args.sde:
        overrides.update(sde=args.sde, sde_args={})
        if args.sde != "edm":
            overrides.update(grid="uniform")
    return recipe_with(overrides)


def cmd_train(args) -> int:
    from scoretut.data.toy2d import DATASETS
    from scoretut.pipelines.toy2d import fit, make_loss, make_sde, training_config
    from scoretut.runtime import device_from_arg
    from scoretut.train import check_run_dir

    if args.data not in DATASETS:
        raise UsageError(f"unknown data set {args.data!r}; choose one of: {', '.join(DATASETS)}")
    recipe = _recipe_from_args(args)
    make_loss(recipe, make_sde(recipe))  # validates --sde and --loss before any work
    training = dict(batch_size=args.batch, lr=args.lr, ema_decay=args.ema_decay, decay_steps=args.decay_steps,
                    ckpt_every=args.ckpt_every)  # fmt: skip
    training_config(args.steps, args.seed, **training)
    device = device_from_arg(args.device, setting="--device")
    out = writable_dir(args.out, "--out")
    check_run_dir(out, args.resume)
    start = time.perf_counter()
    result = fit(recipe, args.steps, args.seed, out_dir=out, resume=args.resume, device=device,
                 progress=not args.quiet, **training)  # fmt: skip
    last = result.history[-1][1] if result.history else float("nan")
    print(json.dumps({"ckpt": str(out / "ckpt.pt"), "steps": result.step, "loss": last,
                      "seconds": round(time.perf_counter() - start, 2)}))  # fmt: skip
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from scoretut.checkpoint import atomic_write
    from scoretut.pipelines.toy2d import generate, load
    from scoretut.runtime import device_from_arg
    from scoretut.sampling import get_sampler, steps_for_nfe

    device = device_from_arg(args.device, setting="--device")
    model, recipe = load(args.ckpt, ema=not args.no_ema)
    name = args.sampler or recipe["sampler"]
    get_sampler(name)
    steps = args.steps
    if steps is None and args.nfe is not None:
        steps = max(1, steps_for_nfe(name, args.nfe, saves_last=True))
    steps = steps or (recipe["steps"] if name == recipe["sampler"] else 500)
    out = args.out if args.out.suffix == ".npy" else args.out.with_suffix(args.out.suffix + ".npy")
    writable_dir(out.parent if str(out.parent) else Path("."), "--out")
    start = time.perf_counter()
    x, nfe, _ = generate(model, recipe, args.n, sampler=name, steps=steps, seed=args.seed, device=device)
    atomic_write(out, lambda p: np.save(p, x.cpu().numpy().astype(np.float32)))
    print(json.dumps({"samples": str(out), "n": args.n, "sampler": name, "steps": steps, "nfe": nfe,
                      "seconds": round(time.perf_counter() - start, 2)}))  # fmt: skip
    return 0


def cmd_eval(args) -> int:
    import numpy as np
    import torch

    from scoretut.data.toy2d import DATASETS
    from scoretut.metrics import evaluate_samples

    if not args.samples.is_file():
        raise UsageError(f"samples file {args.samples} does not exist; pass the .npy written by 'scoretut toy sample'")
    try:
        samples = np.load(args.samples, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise UsageError(f"{args.samples} is not a readable .npy array; pass the file written by 'scoretut toy sample'") from None
    if samples.ndim != 2 or samples.shape[1] != 2 or samples.shape[0] % 100 or not len(samples):
        raise UsageError(f"samples must have shape (n, 2) with n a multiple of 100 (chunks of 100 points), "
                         f"got {samples.shape}; e.g. 'scoretut toy sample --n 10000'")  # fmt: skip
    if args.data not in DATASETS:
        raise UsageError(f"unknown data set {args.data!r}; choose one of: {', '.join(DATASETS)}")
    result = evaluate_samples(torch.from_numpy(np.asarray(samples, dtype=np.float32)), args.data, seed=args.seed)
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}))
    return 0


COMMANDS = {("toy", "train"): cmd_train, ("toy", "sample"): cmd_sample, ("toy", "eval"): cmd_eval}
