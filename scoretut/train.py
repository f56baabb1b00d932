"""One training loop for every model and loss, with EMA, checkpoints and exact resumption.

:func:`train` minimises ``loss_fn(model, x0, generator)`` (any loss of :mod:`scoretut.losses`)
with AdamW, a linear learning-rate warm-up and gradient-norm clipping, and keeps an exponential
moving average of the weights (the exponentially weighted form of Polyak & Juditsky's 1992
iterate averaging, which is uniform; used for sampling by Song & Ermon 2020 and Ho et al. 2020):

.. math::  \\bar\\theta_0 = \\theta_0, \\qquad \\bar\\theta_k = d\\,\\bar\\theta_{k-1} + (1-d)\\,\\theta_k

implemented by :class:`torch.optim.swa_utils.AveragedModel` with ``get_ema_multi_avg_fn(d)``.
``AveragedModel`` *copies* the weights on its first update instead of averaging; we make that
first update with the initial weights, so ``θ̄_0 = θ_0`` and every optimiser step is a true
EMA step with no decay warm-up.

Everything random is drawn from three sources whose states go into each checkpoint: a
``torch.Generator`` for the minibatch indices (:class:`TensorBatches`, on the CPU), a generator
on the training device for the loss's times and noise, and the global torch RNG (seeded, for
models that use it). On the CPU a run resumed from a checkpoint is therefore bit-identical to
an uninterrupted one.

A batch may be a tensor or a tuple of tensors (images and labels); the loss receives it as the
batch source returns it, moved to the device. Options that change only the speed (GPU):
``channels_last`` memory format, ``torch.compile``, the fused AdamW kernel; and ``amp="bf16"``
computes the loss under bfloat16 autocast (the weights, gradients and optimiser state stay
float32). Inside a ``torchrun`` process group (:mod:`scoretut.distributed`) the model is
wrapped in DistributedDataParallel and each of the ``K`` processes draws ``batch_size / K``
examples from its own shard, with its own noise seed; the logged loss is the mean over
processes, and only rank 0 shows progress, runs the callback and writes checkpoints (which hold
every rank's random states).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from scoretut import distributed
from scoretut.checkpoint import check_plain, load_checkpoint, save_checkpoint
from scoretut.errors import UsageError

LossFn = Callable[..., Tensor]
"""``loss_fn(model, x0, generator=...) -> scalar``, e.g. an instance from :mod:`scoretut.losses`."""

CHECKPOINT_NAME = "ckpt.pt"
FORMAT = "scoretut-train-v1"

# Settings that may change between a run and its resumption without changing its meaning.
RESUMABLE_CHANGES = ("steps", "log_every", "ckpt_every", "progress", "channels_last", "compile", "fused")
AMP_DTYPES = {"bf16": torch.bfloat16}


@dataclass
class TrainConfig:
    """Optimisation settings (all plain values, stored in every checkpoint).

    Attributes:
        steps: total optimiser steps (a resumed run continues up to this number).
        batch_size: minibatch size.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW decoupled weight decay (0 gives Adam).
        betas: AdamW's ``(β₁, β₂)``.
        warmup: steps of linear learning-rate warm-up, ``lr_k = lr·min(1, (k+1)/warmup)``.
        decay_steps: if set, after the warm-up the rate follows a cosine from ``lr`` down to
            ``lr·lr_floor`` at step ``decay_steps`` and stays there. A horizon of its own (not
            ``steps``) so that a run resumed to more steps follows the same schedule.
        lr_floor: final fraction of ``lr`` of the cosine decay.
        grad_clip: maximum global gradient norm, or ``None`` for no clipping.
        ema_decay: EMA decay ``d``.
        seed: seeds the minibatch draws, the loss noise and the global torch RNG.
        log_every: steps per entry of the loss history (mean over those steps) and per
            progress-bar update.
        ckpt_every: steps between checkpoints (0: only at the end); needs ``out_dir``.
        progress: show a tqdm bar (only when stderr is a terminal).
        amp: ``"bf16"`` to compute the loss under bfloat16 autocast, ``None`` for float32.
        channels_last: keep the model and 4-D batches in the channels-last memory format.
        compile: train through ``torch.compile(model)``.
        fused: use the fused AdamW implementation.
    """

    steps: int = 2000
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 100
    decay_steps: int | None = None
    lr_floor: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 0
    progress: bool = True
    amp: str | None = None
    channels_last: bool = False
    compile: bool = False
    fused: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # a checkpoint round trip may turn it into a list
        if self.steps < 0 or self.batch_size < 1 or self.log_every < 1 or self.ckpt_every < 0:
            raise UsageError("need steps >= 0, batch_size >= 1, log_every >= 1 and ckpt_every >= 0")
        if self.decay_steps is not None and self.decay_steps <= self.warmup:
            raise UsageError(f"`decay_steps` {self.decay_steps} must exceed the warm-up of {self.warmup} steps")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got `lr` {self.lr}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise UsageError(f"EMA decay must be in [0, 1], got `ema_decay` {self.ema_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UsageError(f"gradient clipping must be positive or off, got `grad_clip` {self.grad_clip}")
        if self.amp not in (None, *AMP_DTYPES):
            raise UsageError(f"unknown `amp` {self.amp!r}; use one of {sorted(AMP_DTYPES)} or leave it off")

    def lr_at(self, step: int) -> float:
        """Linear warm-up ``lr · (step+1)/warmup``, then (with ``decay_steps``) the cosine
        ``lr · (f + (1 − f)(1 + cos(π u))/2)``, ``u = min(1, (step − warmup)/(decay_steps − warmup))``."""
        if self.warmup > 0 and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.decay_steps is None:
            return self.lr
        u = min(1.0, (step - self.warmup) / (self.decay_steps - self.warmup))
        return self.lr * (self.lr_floor + (1 - self.lr_floor) * 0.5 * (1 + math.cos(math.pi * u)))


DEFAULT_TRAINING: dict[str, Any] = {"batch_size": 1024, "lr": 4e-3, "warmup": 50, "decay_steps": 1000,
                                     "lr_floor": 0.05, "ema_decay": 0.99}
"""Optimiser settings of the 2D models (the default recipe of :mod:`scoretut.pipelines.toy2d`
and :func:`scoretut.pipelines.flow2d.fit`), overriding :class:`TrainConfig`: a 50-step warm-up to 4e-3, then
a cosine down to 2e-4 at step 1,000, where it stays. The horizon is fixed (not the number of
training steps), so a run resumed to more steps follows the same schedule; on the swiss roll
the decay brought CD from 1.07× to 1.02× its floor at 1,000 steps in one run of
``benchmarks/toy_swiss_roll.py`` (the sampling-seed spread is ±0.08, so rerun it to see yours)."""


def training_config(steps: int, seed: int = 0, progress: bool = False, defaults: dict[str, Any] | None = None,
                    **training: Any) -> TrainConfig:  # fmt: skip
    """A :class:`TrainConfig` for ``steps`` steps: ``defaults`` (:data:`DEFAULT_TRAINING` if
    ``None``), a log entry every ``min(50, steps)`` steps, then the ``training`` overrides (it
    raises :class:`UsageError` for settings that cannot train)."""
    options = {**(DEFAULT_TRAINING if defaults is None else defaults), "log_every": max(1, min(50, steps)), **training}
    return TrainConfig(steps=steps, seed=seed, progress=progress, **options)


@runtime_checkable
class BatchSource(Protocol):
    """A resumable source of minibatches."""

    def sample(self, batch_size: int) -> Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorBatches:
    """Minibatches drawn uniformly with replacement from a fixed data set ``(N, *dims)``.

    The indices come from a CPU ``torch.Generator`` seeded with ``seed``, so the sequence of
    batches is a deterministic function of ``seed`` and the number of batches drawn so far;
    its state is what :meth:`state_dict` saves.
    """

    def __init__(self, data: Tensor, seed: int = 0):
        if data.ndim < 2 or data.shape[0] == 0:
            raise UsageError(f"training data must have shape (N, dim) with N > 0, got {tuple(data.shape)}")
        self.data = data
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> Tensor:
        idx = torch.randint(self.data.shape[0], (batch_size,), generator=self.generator)
        return self.data[idx.to(self.data.device)]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


class _IteratorBatches:
    """Adapts an iterator of batches; it has no state to save, so resumption is not exact."""

    def __init__(self, batches: Iterable[Tensor]):
        self.batches: Iterator[Tensor] = iter(batches)

    def sample(self, batch_size: int) -> Tensor:
        return next(self.batches)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        warnings.warn("resuming with a data iterator: the batches will differ from an uninterrupted run")


def as_batches(data: Tensor | BatchSource | Iterable[Tensor], seed: int) -> BatchSource:
    """A tensor becomes a :class:`TensorBatches`; batch sources pass through; iterables are wrapped."""
    if isinstance(data, Tensor):
        return TensorBatches(data, seed)
    if isinstance(data, BatchSource):
        return data
    return _IteratorBatches(data)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained network (in eval mode).
        ema: the EMA network (an ``nn.Module`` of the same class; use it for sampling).
        history: ``(step, mean loss over the preceding log_every steps)`` pairs.
        step: the number of optimiser steps taken in total.
    """

    model: nn.Module
    ema: nn.Module
    history: list[tuple[int, float]] = field(default_factory=list)
    step: int = 0


def checkpoint_path(out_dir: str | Path) -> Path:
    """Where :func:`train` keeps the checkpoint of a run in ``out_dir``."""
    return Path(out_dir) / CHECKPOINT_NAME


def check_run_dir(out_dir: str | Path | None, resume: bool = False, overwrite: bool = False) -> Path | None:
    """The checkpoint path of a run in ``out_dir`` (``None`` without one), after checking that
    ``resume`` finds a checkpoint there and that a fresh run would not replace one."""
    ckpt = checkpoint_path(out_dir) if out_dir is not None else None
    if resume and ckpt is None:
        raise UsageError("`resume` needs `out_dir` pointing at the run to continue")
    if ckpt is not None and ckpt.exists() and not (resume or overwrite):
        raise UsageError(f"{ckpt} already exists; pass `resume` to continue it or choose another `out_dir`")
    if ckpt is not None and resume and not ckpt.exists():
        raise UsageError(f"`resume` was given but {ckpt} does not exist; drop `resume` to start afresh")
    return ckpt


def train(
    model: nn.Module,
    loss_fn: LossFn,
    data: Tensor | BatchSource | Iterable[Tensor],
    cfg: TrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    config: dict[str, Any] | None = None,
    callback: Callable[[TrainResult], None] | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps of ``loss_fn(model, x0, generator=g)``.

    Args:
        model: the network being trained, already initialised (seed before building it).
        loss_fn: a loss from :mod:`scoretut.losses`, or any callable of that signature.
        data: a tensor ``(N, dim)`` to draw minibatches from (deterministic), a
            :class:`BatchSource`, or an iterable of batches (not exactly resumable).
        cfg: optimisation settings (default :class:`TrainConfig()`).
        out_dir: directory for ``ckpt.pt``; ``None`` saves nothing.
        resume: continue from ``out_dir/ckpt.pt`` up to ``cfg.steps``.
        overwrite: allow replacing an existing checkpoint when not resuming.
        device: where to train (default: the model's device).
        config: plain metadata stored in the checkpoint (model config, SDE, loss, data set...),
            enough for the CLI to rebuild the model.
        callback: called on rank 0 after every history entry (every ``cfg.log_every`` steps)
            with the run so far as a :class:`TrainResult` (live modules: leave them as found).

    Returns:
        a :class:`TrainResult`. Checkpoints (if ``out_dir``) are written every
        ``cfg.ckpt_every`` steps and at the end.
    """
    cfg = cfg or TrainConfig()
    config = dict(config or {})
    check_plain(config, "config")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ckpt = check_run_dir(out_dir, resume, overwrite)

    rank, world = distributed.world()
    if cfg.batch_size % world:
        raise UsageError(f"batch size {cfg.batch_size} is not divisible by the {world} processes; change `batch_size`")
    main = rank == 0
    torch.manual_seed(cfg.seed + rank)  # rank 0 (and a single process) uses the seed itself
    model.to(device).train()
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    batches = as_batches(data, cfg.seed + 7919 * rank)  # a tensor data set: each rank its own draws
    noise = torch.Generator(device).manual_seed(cfg.seed + 1 + 7919 * rank)  # times/noise of the loss
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                            fused=True if cfg.fused else None)  # fmt: skip
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
    ema.update_parameters(model)  # first update copies: θ̄_0 = θ_0 (see module docstring)
    forward: nn.Module = model
    if world > 1:
        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        forward = torch.compile(forward)
    loop = _Loop(model, ema, opt, batches, noise, cfg, config, forward=forward)
    if resume:
        loop.restore(load_checkpoint(ckpt, map_location="cpu"), ckpt)

    bar = tqdm(total=cfg.steps, initial=loop.step, disable=not (main and cfg.progress and sys.stderr.isatty()),
               desc="train", dynamic_ncols=True)  # fmt: skip
    tick, tick_step = time.perf_counter(), loop.step
    with bar:
        while loop.step < cfg.steps:
            loop.one_step(loss_fn, device)
            bar.update(1)
            if loop.step % cfg.log_every == 0:
                loss = loop.flush_log()
                now = time.perf_counter()
                rate = (loop.step - tick_step) * cfg.batch_size / max(now - tick, 1e-9)
                tick, tick_step = now, loop.step
                bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{rate:.3g}")
                if callback is not None and main:
                    callback(TrainResult(model, ema.module, list(loop.history), loop.step))
            if ckpt is not None and cfg.ckpt_every and loop.step % cfg.ckpt_every == 0:
                _save(ckpt, loop.state(), main)
    if ckpt is not None:
        _save(ckpt, loop.state(), main)
    model.eval()
    ema.module.eval()
    return TrainResult(model, ema.module, list(loop.history), loop.step)


def _save(path: Path, state: dict[str, Any], main: bool) -> None:
    """Rank 0 writes (every rank has called ``loop.state()``, which gathers across ranks)."""
    if main:
        save_checkpoint(path, state)


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    """Move a tensor or a tuple/list of tensors to ``device`` (4-D tensors optionally channels-last)."""
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device, channels_last) for b in batch)
    batch = batch.to(device, non_blocking=True)
    if channels_last and batch.ndim == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


class _Loop:
    """The mutable state of one run: one optimiser step at a time, and its checkpoint form.

    ``model`` is the network whose weights are saved; ``forward`` is what the loss calls (the
    same module, or a DDP / compiled wrapper around it).
    """

    def __init__(self, model: nn.Module, ema: AveragedModel, opt: torch.optim.Optimizer, batches: BatchSource,
                 noise: torch.Generator, cfg: TrainConfig, config: dict[str, Any],
                 forward: nn.Module | None = None):  # fmt: skip
        self.model, self.ema, self.opt, self.batches, self.noise = model, ema, opt, batches, noise
        self.forward = forward if forward is not None else model
        self.rank, self.world = distributed.world()
        self.cfg, self.config = cfg, config
        self.step = 0
        self.history: list[tuple[int, float]] = []
        self.window_sum, self.window_count = 0.0, 0
        self._pending: list[Tensor] = []  # detached losses not yet moved to the host

    def one_step(self, loss_fn: LossFn, device: torch.device) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr_at(self.step)
        batch = _to_device(self.batches.sample(self.cfg.batch_size // self.world), device, self.cfg.channels_last)
        amp = AMP_DTYPES.get(self.cfg.amp)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = loss_fn(self.forward, batch, generator=self.noise)
        loss = loss.float()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        self._pending.append(loss.detach())

    def flush_log(self) -> float:
        """Append ``(step, mean loss since the last entry)`` to the history and return the mean."""
        if self._pending:
            self.window_sum += float(torch.stack(self._pending).sum())
            self.window_count += len(self._pending)
            self._pending.clear()
        mean = distributed.all_mean(self.window_sum / max(self.window_count, 1), self.noise.device)
        if not math.isfinite(mean):
            raise UsageError(f"the loss became {mean} by step {self.step}; lower `lr` or set `grad_clip`")
        self.history.append((self.step, mean))
        self.window_sum, self.window_count = 0.0, 0
        return mean

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimiser, RNGs, history.

        In a process group every rank must call it (it gathers each rank's random states and
        data position into ``"ranks"``; the top-level copies are rank 0's).
        """
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "noise": self.noise.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        local = {
            "rng": rng,
            "data": self.batches.state_dict(),
            "window": [self.window_sum, self.window_count],
            # unlogged losses are kept as they are, so the window is summed in the same order
            "pending": torch.stack(self._pending).cpu() if self._pending else torch.zeros(0),
        }
        ranks = distributed.all_gather(local) if self.world > 1 else [local]
        state = {
            "format": FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_n_averaged": int(self.ema.n_averaged),
            "optimizer": self.opt.state_dict(),
            **ranks[0],
            "history": [[s, v] for s, v in self.history],
            "train_config": asdict(self.cfg),
            "config": self.config,
        }
        if self.world > 1:
            state["ranks"] = ranks
        return state

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Inverse of :meth:`state`; raises :class:`UsageError` if the run does not match."""
        if state.get("format") != FORMAT:
            raise UsageError(f"{path} is not a scoretut training checkpoint; choose another `out_dir`")
        if state["config"] != self.config:
            raise UsageError(f"{path} was trained with a different configuration; "
                             "resume with the same settings or choose another `out_dir`")  # fmt: skip
        saved = TrainConfig(**state["train_config"])
        changed = [k for k, v in asdict(saved).items() if k not in RESUMABLE_CHANGES and getattr(self.cfg, k) != v]
        if changed:
            warnings.warn(f"resuming {path} with changed settings {changed}; the result will differ "
                          "from an uninterrupted run")  # fmt: skip
        try:
            self.model.load_state_dict(state["model"])
            self.ema.module.load_state_dict(state["ema"])
        except RuntimeError as e:
            raise UsageError(f"{path} holds weights for a different network ({str(e).splitlines()[0]}); "
                             "use the same model settings or another `out_dir`") from None  # fmt: skip
        self.ema.n_averaged.fill_(state["ema_n_averaged"])
        self.opt.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.history = [(int(s), float(v)) for s, v in state["history"]]
        ranks = state.get("ranks", [state])
        if len(ranks) != self.world:
            if self.rank == 0:
                warnings.warn(f"{path} was written by {len(ranks)} process(es) and is resumed by {self.world}; "
                              "the data order and noise will differ from an uninterrupted run")  # fmt: skip
            if self.rank >= len(ranks):  # keep this rank's fresh seeds rather than copy another's
                return
        local = ranks[self.rank]
        torch.set_rng_state(local["rng"]["torch"])
        self.noise.set_state(local["rng"]["noise"])
        if "cuda" in local["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(local["rng"]["cuda"])
        self.batches.load_state_dict(local["data"])
        self.window_sum, self.window_count = float(local["window"][0]), int(local["window"][1])
        device = next(self.model.parameters()).device
        self._pending = list(local.get("pending", torch.zeros(0)).to(device).unbind())
