"""Training and sampling throughput of the AFHQ U-Net, measured side by side in one run.

Training: images per second and peak memory of one optimiser step (ε-loss with label dropout,
AdamW, gradient clipping) of the U-Net at 64×64 in four settings — fp32 eager, channels_last,
torch.compile, bf16 autocast — each in a fresh subprocess, reported with its ratio to fp32
eager of the same run. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU and the
process's peak resident set size (which includes the ~0.5 GB of the PyTorch runtime) on the CPU.

Sampling: images per second of ancestral DDPM with 1000 steps, DDIM with 50 and DDIM with 20 on
the same (fp32, eval) network; with ``--sample-cap K`` only the first K network evaluations of
each sampler are timed and the rate is extrapolated to the full number of steps (the CPU
default, marked ``extrapolated`` in the output). On a GPU run it without a cap.

    python benchmarks/unet_throughput.py --device cuda            # GPU: batch 32, 20 timed steps
    python benchmarks/unet_throughput.py --device cpu             # CPU: batch 2, 2 timed steps
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

MODES = {
    "fp32_eager": {},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "bf16_autocast": {"amp": "bf16"},
}


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_mode(args) -> dict:
    """Time ``args.steps`` optimiser steps after ``args.warmup`` untimed ones, in this process."""
    import torch

    from scoretut.pipelines.images import COURSE_NET, NETS, NoiseLoss, build, make_recipe, make_sde

    opts = MODES[args.mode]
    device = torch.device(args.device)
    torch.manual_seed(0)
    recipe = make_recipe(["cat", "dog", "wild"], args.size, NETS.get(args.net, COURSE_NET))
    model = build(recipe).to(device).train()
    if opts.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if opts.get("compile") else model
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=True if device.type == "cuda" else None)
    loss_fn = NoiseLoss(make_sde(recipe), 0.1)
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device, generator=g)
    if opts.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(1, 4, (args.batch,), device=device, generator=g)
    amp = torch.bfloat16 if opts.get("amp") == "bf16" else None

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(forward, (x, y), g)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    _sync(device)
    warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": args.mode, "img_per_s": args.batch * args.steps / dt, "peak_mb": peak_mb,
            "warmup_s": warm, "params": sum(p.numel() for p in model.parameters())}  # fmt: skip


def sampling(args) -> list[dict]:
    import torch

    from scoretut.sampling import ddim, ddpm
    from scoretut.pipelines.images import COURSE_NET, NETS, build, guided_noise, make_recipe, make_sde
    from scoretut.parametrisation import Prediction
    from scoretut.schedules import ddpm_timesteps

    device = torch.device(args.device)
    torch.manual_seed(0)
    recipe = make_recipe(["cat", "dog", "wild"], args.size, NETS.get(args.net, COURSE_NET))
    model = build(recipe).to(device).eval()
    sde = make_sde(recipe)
    rows = []
    for name, fn, steps in (("ancestral-1000", ddpm, 1000), ("ddim-50", ddim, 50), ("ddim-20", ddim, 20)):
        ts = ddpm_timesteps(sde, steps)
        timed = steps if args.sample_cap is None else min(steps, args.sample_cap)
        g = torch.Generator(device).manual_seed(0)
        x = torch.randn(args.sample_batch, 3, args.size, args.size, device=device, generator=g)
        y = torch.randint(1, 4, (args.sample_batch,), device=device, generator=g)
        score = Prediction(sde, guided_noise(model, y, 1.0), "eps")
        with torch.no_grad():
            it = fn(sde, score, x, ts, generator=g, clip_x0=1.0)
            next(it)  # the starting state
            next(it)  # one untimed step (allocations)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(timed):
                next(it, None)
            _sync(device)
            per_step = (time.perf_counter() - t0) / timed
        rows.append({"sampler": name, "img_per_s": args.sample_batch / (per_step * steps),
                     "s_per_batch": per_step * steps, "timed_steps": timed,
                     "extrapolated": timed < steps})  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--net", default="full", help="full (the course's U-Net), small or tiny")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=None, help="training batch (default 32 on cuda, 2 on cpu)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 20 cuda, 2 cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 cuda, 1 cpu)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 64 cuda, 2 cpu)")
    p.add_argument("--sample-cap", type=int, default=None, help="time at most this many steps per sampler (cpu: 3)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: one training mode
    args = p.parse_args()
    cuda = args.device.startswith("cuda")
    args.batch = args.batch or (32 if cuda else 2)
    args.steps = args.steps or (20 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    args.sample_batch = args.sample_batch or (64 if cuda else 2)
    if args.sample_cap is None and not cuda:
        args.sample_cap = 3
    if args.mode:
        print(json.dumps(train_mode(args)))
        return
    base = [sys.executable, __file__, "--device", args.device, "--net", args.net, "--size", str(args.size),
            "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
    results = []
    for mode in args.modes.split(","):
        done = subprocess.run([*base, "--mode", mode], capture_output=True, text=True)
        if done.returncode != 0:
            results.append({"mode": mode, "error": done.stderr.strip().splitlines()[-1]})
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ref = next((r for r in results if r.get("mode") == "fp32_eager" and "img_per_s" in r), None)
    for r in results:
        if ref is not None and "img_per_s" in r:
            r["speed_vs_fp32_eager"] = r["img_per_s"] / ref["img_per_s"]
            r["memory_vs_fp32_eager"] = r["peak_mb"] / ref["peak_mb"]
    out = {"device": args.device, "net": args.net, "size": args.size, "batch": args.batch, "timed_steps": args.steps,
           "training": results, "sampling": sampling(args)}  # fmt: skip
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
