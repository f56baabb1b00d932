"""``scoretut ddpm …``: the image DDPM from the command line (parsers and commands).

::

    scoretut ddpm proxy  --out data/proxy
    scoretut ddpm train  --data data/afhq --out runs/afhq [--steps 100000 --batch 32 --cfg --amp bf16 --channels-last --compile]
    scoretut ddpm sample --ckpt runs/afhq/ckpt.pt --out samples/ [--n 500 --sampler ddpm|ddim --steps 50 --cfg-scale 7.5 --label cat]
    scoretut ddpm fid    --real data/afhq/val --fake samples/ [--inception-weights PATH]

``torchrun --nproc_per_node=K scoretut ddpm train …`` trains on ``K`` GPUs (or CPU processes
with ``--device cpu``). The course's spellings ``--ckpt_path``, ``--save_dir``, ``--use_cfg``,
``--cfg_scale`` and ``--max_num_images_per_cat`` are accepted as aliases.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from scoretut.cli.common import Parser, add_common, positive, writable_dir
from scoretut.errors import UsageError


def add_parsers(groups) -> None:
    """Add the ``ddpm`` group to the ``scoretut`` parser (``groups`` = its sub-parsers)."""
    from scoretut.pipelines.images import NETS, TRAINING
    from scoretut.schedules import BETA_SCHEDULES

    ddpm = groups.add_parser("ddpm", help="image DDPM (AFHQ 64x64): proxy data, train, sample, FID")
    cmds = ddpm.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    px = cmds.add_parser("proxy", help="write the offline 3-class proxy data set in the AFHQ layout")
    px.add_argument("--out", "--save_dir", required=True, type=Path, help="where to write it (e.g. data/proxy)")
    px.add_argument("--n-train", type=positive(int), default=500, help="training images per class (default 500)")
    px.add_argument("--n-val", type=positive(int), default=100, help="validation images per class (default 100)")
    px.add_argument("--size", type=positive(int), default=64, help="image side in pixels (default 64)")
    px.add_argument("--seed", type=int, default=0, help="random seed (the files depend only on the arguments)")

    tr = cmds.add_parser("train", help="train a DDPM on an AFHQ-layout folder (ROOT/train/<class>/*.jpg)")
    tr.add_argument("--data", type=Path, default=Path("data/afhq"), help="data folder (default data/afhq)")
    tr.add_argument("--out", "--save_dir", required=True, type=Path, help="run directory; the checkpoint is OUT/ckpt.pt")
    tr.add_argument("--steps", type=positive(int), default=100_000, help="optimiser steps (default 100000)")
    tr.add_argument("--batch", type=positive(int), default=TRAINING["batch_size"],
                    help=f"global batch size, split across processes (default {TRAINING['batch_size']})")
    tr.add_argument("--lr", type=positive(float), default=TRAINING["lr"], help=f"peak learning rate (default {TRAINING['lr']})")
    tr.add_argument("--warmup", type=int, default=TRAINING["warmup"], help=f"warm-up steps (default {TRAINING['warmup']})")
    tr.add_argument("--ema-decay", type=float, default=TRAINING["ema_decay"], help=f"EMA decay (default {TRAINING['ema_decay']})")
    tr.add_argument("--grad-clip", type=positive(float), default=TRAINING["grad_clip"], help="gradient-norm clip (default 1)")
    tr.add_argument("--image-size", type=positive(int), default=64, help="resize images to this side (default 64)")
    tr.add_argument("--net", default="full", choices=list(NETS), help="U-Net size: full (the course's), small, tiny")
    tr.add_argument("--cfg", "--use_cfg", action="store_true", help="class-conditional with label dropout, for guidance")
    tr.add_argument("--cfg-drop", type=float, default=0.1, help="label-drop probability with --cfg (default 0.1)")
    tr.add_argument("--schedule", default="linear", choices=list(BETA_SCHEDULES), help="β schedule (default linear)")
    tr.add_argument("--T", type=positive(int), default=1000, help="diffusion steps (default 1000)")
    tr.add_argument("--min-snr-gamma", type=float, default=None,
                    help="weight the loss by min-SNR-γ, e.g. 5 (default: DDPM's plain ε-loss)")
    tr.add_argument("--limit", "--max_num_images_per_cat", type=positive(int), default=None,
                    help="use at most this many training images per class")
    tr.add_argument("--amp", choices=["bf16"], default=None, help="bfloat16 autocast (GPU)")
    tr.add_argument("--channels-last", action="store_true", help="channels-last memory format (GPU)")
    tr.add_argument("--compile", action="store_true", help="torch.compile the model")
    tr.add_argument("--fused", action="store_true", help="fused AdamW kernel")
    tr.add_argument("--log-every", type=positive(int), default=100, help="steps per logged loss (default 100)")
    tr.add_argument("--ckpt-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    tr.add_argument("--sample-every", type=int, default=5000,
                    help="steps between sample grids and loss.png in --out (default 5000; 0: never)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out up to --steps")
    add_common(tr)

    sa = cmds.add_parser("sample", help="write generated images (PNG) from a checkpoint")
    sa.add_argument("--ckpt", "--ckpt_path", required=True, type=Path, help="checkpoint written by 'scoretut ddpm train'")
    sa.add_argument("--out", "--save_dir", required=True, type=Path, help="folder for the PNG files")
    sa.add_argument("--n", type=positive(int), default=500, help="number of images (default 500)")
    sa.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="ddpm (ancestral) or ddim (default ddpm)")
    sa.add_argument("--steps", type=positive(int), default=None, help="sampler steps (default: T for ddpm, 50 for ddim)")
    sa.add_argument("--eta", type=float, default=0.0, help="DDIM η (0 deterministic, 1 = DDPM)")
    sa.add_argument("--cfg-scale", "--cfg_scale", type=float, default=None,
                    help="guidance scale w (default 7.5 for a --cfg model; 1 = plain conditional, 0 = unconditional)")
    sa.add_argument("--label", default=None, help="class name for every image (default: the classes in turn)")
    sa.add_argument("--batch", type=positive(int), default=100, help="images per batch (default 100)")
    sa.add_argument("--grid", type=Path, default=None, help="also write the first 64 images as one PNG grid here")
    sa.add_argument("--no-ema", action="store_true", help="sample with the raw weights instead of the EMA")
    sa.add_argument("--overwrite", action="store_true", help="replace the PNG files already in --out")
    add_common(sa)

    fd = cmds.add_parser("fid", help="Fréchet distance between two image folders (FID with --inception-weights)")
    fd.add_argument("--real", required=True, type=Path, help="reference images, e.g. data/afhq/val")
    fd.add_argument("--fake", required=True, type=Path, help="generated images, e.g. the --out of 'ddpm sample'")
    fd.add_argument("--inception-weights", type=Path, default=None,
                    help="torchvision inception_v3 weights file (see README); without it: the offline classifier FD")
    fd.add_argument("--classifier", type=Path, default=None, help="feature classifier file: loaded if it exists, else trained and saved")
    fd.add_argument("--classifier-data", type=Path, default=None,
                    help="AFHQ-layout folder to train the classifier on (default: the parent of --real)")
    fd.add_argument("--classifier-steps", type=positive(int), default=2000, help="classifier training steps (default 2000)")
    fd.add_argument("--size", type=positive(int), default=None, help="image side for the classifier (default 64)")
    fd.add_argument("--batch", type=positive(int), default=100, help="images per forward pass (default 100)")
    fd.add_argument("--seed", type=int, default=0, help="seed of the classifier training")
    fd.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")


def cmd_proxy(args) -> int:
    from scoretut.data.images import write_proxy

    start = time.perf_counter()
    out = write_proxy(args.out, args.n_train, args.n_val, args.size, args.seed)
    print(json.dumps({"proxy": str(out), "classes": 3, "train_per_class": args.n_train, "val_per_class": args.n_val,
                      "size": args.size, "seconds": round(time.perf_counter() - start, 2)}))  # fmt: skip
    return 0


def cmd_train(args) -> int:
    from scoretut import distributed
    from scoretut.data.images import find_images
    from scoretut.pipelines.images import fit, make_recipe, training_config
    from scoretut.train import check_run_dir

    # every input is checked before the process group starts or an image is decoded
    _, _, classes = find_images(args.data, "train")
    make_recipe(classes, args.image_size, args.net, args.schedule, args.T, args.cfg_drop, args.cfg, args.min_snr_gamma)
    training_config(args.steps, args.seed, args.sample_every, batch_size=args.batch, lr=args.lr, warmup=args.warmup,
                    ema_decay=args.ema_decay, grad_clip=args.grad_clip, amp=args.amp,
                    log_every=min(args.log_every, args.steps), ckpt_every=args.ckpt_every)  # fmt: skip
    check_run_dir(args.out, args.resume)
    world = distributed.setup(args.device)
    try:
        if world.rank == 0:
            writable_dir(args.out, "--out")
        start = time.perf_counter()
        result, recipe = fit(args.data, args.steps, out_dir=args.out, image_size=args.image_size, net=args.net,
                             conditional=args.cfg, cfg_drop=args.cfg_drop, min_snr_gamma=args.min_snr_gamma,
                             schedule=args.schedule, T=args.T,
                             seed=args.seed, device=world.device, resume=args.resume, limit=args.limit,
                             sample_every=args.sample_every, batch_size=args.batch, lr=args.lr, warmup=args.warmup,
                             ema_decay=args.ema_decay, grad_clip=args.grad_clip, amp=args.amp,
                             channels_last=args.channels_last, compile=args.compile, fused=args.fused,
                             log_every=min(args.log_every, args.steps), ckpt_every=args.ckpt_every,
                             progress=not args.quiet)  # fmt: skip
        if world.rank == 0:
            last = result.history[-1][1] if result.history else float("nan")
            print(json.dumps({"ckpt": str(args.out / "ckpt.pt"), "steps": result.step, "loss": last,
                              "classes": recipe["classes"], "processes": world.size,
                              "seconds": round(time.perf_counter() - start, 2)}))  # fmt: skip
    finally:
        distributed.teardown()
    return 0


def cmd_sample(args) -> int:
    from PIL import Image

    from scoretut.data.images import to_bytes
    from scoretut.pipelines.images import generate, label_tensor, load, save_grid
    from scoretut.runtime import device_from_arg

    device = device_from_arg(args.device, setting="--device")
    model, recipe = load(args.ckpt, ema=not args.no_ema)
    conditional = recipe["net"]["num_classes"] > 0
    scale = args.cfg_scale if args.cfg_scale is not None else (7.5 if conditional else 1.0)
    label_tensor(recipe, args.label, args.n, scale)  # the class exists, and labels for guidance
    if args.steps is not None and args.steps > recipe["T"]:
        raise UsageError(f"--steps {args.steps} exceeds the model's {recipe['T']} diffusion steps; "
                         f"use at most --steps {recipe['T']}")  # fmt: skip
    if args.grid is not None:
        writable_dir(args.grid.parent, "--grid")
    out = writable_dir(args.out, "--out")
    old = sorted(out.glob("*.png"))
    if old and not args.overwrite:
        raise UsageError(f"{out} already holds {len(old)} PNG files; choose an empty --out or pass --overwrite")
    for p in old:
        p.unlink()
    start = time.perf_counter()
    x = generate(model, recipe, args.n, labels=args.label, sampler=args.sampler, steps=args.steps, cfg_scale=scale,
                 eta=args.eta, seed=args.seed, device=device, batch_size=args.batch).x  # fmt: skip
    for i, img in enumerate(to_bytes(x)):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(out / f"{i:05d}.png")
    if args.grid is not None:
        save_grid(x[:64], args.grid, nrow=8)
    steps = args.steps or (recipe["T"] if args.sampler == "ddpm" else 50)
    print(json.dumps({"out": str(out), "n": args.n, "sampler": args.sampler, "steps": steps, "cfg_scale": scale,
                      "label": args.label, "seconds": round(time.perf_counter() - start, 2)}))  # fmt: skip
    return 0


def _classifier(args, device):
    """The offline feature classifier: loaded from ``--classifier`` or trained on the data set."""
    from scoretut.data.images import ImageFolder, find_images
    from scoretut.fid import accuracy, load_classifier, save_classifier, train_classifier

    if args.classifier is not None and args.classifier.exists():
        net, meta = load_classifier(args.classifier)
        if args.size is not None and args.size != meta["image_size"]:
            raise UsageError(f"{args.classifier} works on {meta['image_size']}px images; drop --size or use another --classifier")
        return net, meta["image_size"], meta.get("val_accuracy")
    root = args.classifier_data
    if root is None:
        if args.real.name in ("train", "val") and (args.real.parent / "train").is_dir():
            root = args.real.parent
        else:
            raise UsageError("pass --classifier-data ROOT (an AFHQ-layout folder to train the feature classifier on), "
                             "--classifier PATH, or --inception-weights PATH")  # fmt: skip
    size = args.size or 64
    find_images(root, "train")  # the layout, before decoding anything
    if args.classifier is not None:

        writable_dir(args.classifier.parent, "--classifier")
    train_set = ImageFolder(root, "train", size)
    net = train_classifier(train_set, steps=args.classifier_steps, seed=args.seed, device=device)
    val_acc = None
    if (Path(root) / "val").is_dir():
        val_acc = accuracy(net, ImageFolder(root, "val", size, classes=train_set.classes), device)
    if args.classifier is not None:
        save_classifier(net, args.classifier, train_set.classes, size, val_acc)
    return net, size, val_acc


def cmd_fid(args) -> int:
    from scoretut.fid import (FD_CLASSIFIER, FID_INCEPTION, InceptionFeatures, extract_features, fd_of_features,
                              image_files, read_images)  # fmt: skip
    from scoretut.runtime import device_from_arg

    device = device_from_arg(args.device, setting="--device")
    for flag, path in (("--real", args.real), ("--fake", args.fake)):
        if not path.is_dir():
            raise UsageError(f"{flag} {path} is not a folder; pass a folder of .jpg/.png images")
        try:
            image_files(path)
        except UsageError as e:
            raise UsageError(f"{flag}: {e}") from None
    start = time.perf_counter()
    if args.inception_weights is not None:
        net, size, metric, val_acc = InceptionFeatures(args.inception_weights), args.size or 299, FID_INCEPTION, None
    else:
        net, size, val_acc = _classifier(args, device)
        metric = FD_CLASSIFIER
    real = extract_features(net, read_images(args.real, size), args.batch, device)
    fake = extract_features(net, read_images(args.fake, size), args.batch, device)
    result = {"metric": metric, "value": round(fd_of_features(real, fake), 6), "n_real": len(real),
              "n_fake": len(fake), "features": real.shape[1], "image_size": size}  # fmt: skip
    if val_acc is not None:
        result["classifier_val_accuracy"] = round(val_acc, 4)
    result["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(result))
    return 0


COMMANDS = {("ddpm", "proxy"): cmd_proxy, ("ddpm", "train"): cmd_train, ("ddpm", "sample"): cmd_sample,
            ("ddpm", "fid"): cmd_fid}  # fmt: skip
