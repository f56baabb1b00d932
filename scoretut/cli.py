"""The ``scoretut`` command line (also ``python -m scoretut``).

::

    scoretut toy train  --data swiss_roll --steps 2000 --seed 0 --out runs/roll
    scoretut toy sample --ckpt runs/roll/ckpt.pt --n 10000 --seed 0 --out samples.npy [--sampler NAME --nfe N]
    scoretut toy eval   --samples samples.npy --data swiss_roll
    scoretut ddpm proxy|train|sample|fid ...   (images; see scoretut.cli_ddpm)

Bad input never ends in a traceback: it prints one line naming the fix and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from scoretut.cli_ddpm import COMMANDS as DDPM_COMMANDS
from scoretut.cli_ddpm import add_parsers as add_ddpm_parsers
from scoretut.config import UsageError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{message}; see '{self.prog} --help'")


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _writable_dir(path: Path, flag: str) -> Path:
    """Create ``path`` if needed and check a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to {path} ({e.strerror or e}); choose another {flag}") from None
    return path


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (CPU runs are deterministic)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from scoretut.toy import DEFAULT_RECIPE, DEFAULT_TRAINING as T

    parser = _Parser(prog="scoretut", description="Score-based and diffusion models from the command line.")
    groups = parser.add_subparsers(dest="group", required=True, parser_class=_Parser)
    toy = groups.add_parser("toy", help="2D toy pipeline: train, sample, evaluate")
    cmds = toy.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    tr = cmds.add_parser("train", help="train a score model on a 2D data set (best recipe by default)")
    tr.add_argument("--data", default=DEFAULT_RECIPE["data"], help="swiss_roll, moons, eight_gaussians, gmm, ...")
    tr.add_argument("--steps", type=_positive(int), default=1000, help="optimiser steps (default 1000)")
    tr.add_argument("--out", required=True, type=Path, help="run directory; the checkpoint is OUT/ckpt.pt")
    tr.add_argument("--sde", default=None, help="edm, vp, subvp, ve, ou (default edm; vp for score losses)")
    tr.add_argument("--loss", default=None, help="edm, dsm, ism, ssm (default edm)")
    tr.add_argument("--param", default=None, help="edm (denoiser preconditioning) or score (net/std)")
    tr.add_argument("--batch", type=_positive(int), default=T["batch_size"], help=f"batch size (default {T['batch_size']})")
    tr.add_argument("--lr", type=_positive(float), default=T["lr"], help=f"peak learning rate (default {T['lr']})")
    tr.add_argument("--decay-steps", type=_positive(int), default=T["decay_steps"],
                    help=f"step at which the cosine learning-rate decay ends (default {T['decay_steps']})")
    tr.add_argument("--ema-decay", type=float, default=T["ema_decay"], help=f"EMA decay of the weights (default {T['ema_decay']})")
    tr.add_argument("--hidden", type=_positive(int), default=DEFAULT_RECIPE["net"]["hidden"], help="MLP width")
    tr.add_argument("--depth", type=_positive(int), default=DEFAULT_RECIPE["net"]["depth"], help="residual blocks")
    tr.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints (default 500)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    _add_common(tr)

    sa = cmds.add_parser("sample", help="draw samples from a trained checkpoint into an .npy file")
    sa.add_argument("--ckpt", required=True, type=Path, help="checkpoint written by 'scoretut toy train'")
    sa.add_argument("--n", type=_positive(int), default=10_000, help="number of samples (default 10000)")
    sa.add_argument("--out", required=True, type=Path, help="output .npy file, shape (n, 2) float32")
    sa.add_argument("--sampler", default=None, help="em, pc, ode_euler, ode_heun, ode_rk45 (default: the recipe's)")
    sa.add_argument("--nfe", type=_positive(int), default=None, help="budget of network evaluations")
    sa.add_argument("--steps", type=_positive(int), default=None, help="sampler steps (instead of --nfe)")
    sa.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the EMA")
    _add_common(sa)

    ev = cmds.add_parser("eval", help="Chamfer and earth mover's distance of samples against the data")
    ev.add_argument("--samples", required=True, type=Path, help=".npy file of shape (n, 2)")
    ev.add_argument("--data", default="swiss_roll", help="the data set the samples should match")
    ev.add_argument("--seed", type=int, default=0, help="seed of the target draw")
    add_ddpm_parsers(groups, _Parser, _positive, _add_common)
    return parser


def _recipe_from_args(args) -> dict:
    """The default recipe with the command-line choices applied.

    Choosing a score loss (dsm/ism/ssm) switches to the classic setting those losses are
    written for: a network that predicts the score, the VP SDE unless ``--sde`` says otherwise,
    and Euler–Maruyama sampling over a uniform grid.
    """
    from scoretut.toy import DEFAULT_RECIPE, recipe_with

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
    from scoretut.config import device_from_arg
    from scoretut.data import DATASETS
    from scoretut.toy import fit, make_loss, make_sde, training_config
    from scoretut.train import check_run_dir

    if args.data not in DATASETS:
        raise UsageError(f"unknown data set {args.data!r}; choose one of: {', '.join(DATASETS)}")
    recipe = _recipe_from_args(args)
    make_loss(recipe, make_sde(recipe))  # validates --sde and --loss before any work
    training = dict(batch_size=args.batch, lr=args.lr, ema_decay=args.ema_decay, decay_steps=args.decay_steps,
                    ckpt_every=args.ckpt_every)  # fmt: skip
    training_config(args.steps, args.seed, **training)
    device = device_from_arg(args.device, setting="--device")
    out = _writable_dir(args.out, "--out")
    check_run_dir(out, args.resume)
    start = time.perf_counter()
    result = fit(recipe, args.steps, args.seed, out_dir=out, resume=args.resume, device=device,
                 progress=not args.quiet, **training)  # fmt: skip
    last = result.history[-1][1] if result.history else float("nan")
    print(json.dumps({"ckpt": str(out / "ckpt.pt"), "steps": result.step, "loss": last,
                      "seconds": round(time.perf_counter() - start, 2)}))  # fmt: skip
    return 0


def _steps_for(sampler: str, nfe: int | None, steps: int | None, default: int) -> int | None:
    from scoretut.toy import NFE_PER_STEP

    if steps is not None:
        return steps
    if nfe is None:
        return default
    per = NFE_PER_STEP.get(sampler)
    if per is None:
        raise UsageError(f"--nfe does not apply to the adaptive sampler {sampler}; drop --nfe")
    return max(1, (nfe + 1) // per) if sampler == "ode_heun" else max(1, nfe // per)


def cmd_sample(args) -> int:
    import numpy as np

    from scoretut.checkpoint import load_checkpoint
    from scoretut.config import device_from_arg
    from scoretut.samplers import get_sampler
    from scoretut.toy import build_model, generate

    device = device_from_arg(args.device, setting="--device")
    state = load_checkpoint(args.ckpt, map_location="cpu")
    config = state.get("config", {})
    if config.get("kind") != "toy" or "ema" not in state:
        raise UsageError(f"{args.ckpt} is not a 'scoretut toy train' checkpoint; pass one written by it")
    recipe = config["recipe"]
    name = args.sampler or recipe["sampler"]
    get_sampler(name)
    model = build_model(recipe)
    model.load_state_dict(state["model" if args.no_ema else "ema"])
    steps = _steps_for(name, args.nfe, args.steps, recipe["steps"] if name == recipe["sampler"] else 500)
    out = args.out if args.out.suffix == ".npy" else args.out.with_suffix(args.out.suffix + ".npy")
    _writable_dir(out.parent if str(out.parent) else Path("."), "--out")
    start = time.perf_counter()
    x, nfe = generate(model, args.n, sampler=name, steps=steps, seed=args.seed, device=device, recipe=recipe)
    tmp = out.with_name(out.name + ".tmp.npy")
    np.save(tmp, x.cpu().numpy().astype(np.float32))
    os.replace(tmp, out)
    print(json.dumps({"samples": str(out), "n": args.n, "sampler": name, "steps": steps, "nfe": nfe,
                      "seconds": round(time.perf_counter() - start, 2)}))  # fmt: skip
    return 0


def cmd_eval(args) -> int:
    import numpy as np
    import torch

    from scoretut.data import DATASETS
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
COMMANDS.update(DDPM_COMMANDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[(args.group, args.cmd)](args)
    except UsageError as e:
        print(f"scoretut: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scoretut: interrupted; resume training with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
