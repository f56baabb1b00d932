"""One training loop for every model and loss, with EMA, checkpoints and exact resumption.

:func:`train` minimises ``loss_fn(model, x0, generator)`` (any loss of :mod:`scoretut.losses`)
with AdamW, a linear learning-rate warm-up and gradient-norm clipping, and keeps an exponential
moving average of the weights (Polyak & Juditsky 1992; used for sampling by Song & Ermon 2020
and Ho et al. 2020):

.. math::  \\bar\\theta_0 = \\theta_0, \\qquad \\bar\\theta_k = d\\,\\bar\\theta_{k-1} + (1-d)\\,\\theta_k

implemented by :class:`torch.optim.swa_utils.AveragedModel` with ``get_ema_multi_avg_fn(d)``.
``AveragedModel`` *copies* the weights on its first update instead of averaging; we make that
first update with the initial weights, so ``θ̄_0 = θ_0`` and every optimiser step is a true
EMA step with no decay warm-up.

Everything random is drawn from three sources whose states go into each checkpoint: a
``torch.Generator`` for the minibatch indices (:class:`TensorSampler`, on the CPU), a generator
on the training device for the loss's times and noise, and the global torch RNG (seeded, for
models that use it). On the CPU a run resumed from a checkpoint is therefore bit-identical to
an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from scoretut.checkpoint import check_plain, load_checkpoint, save_checkpoint
from scoretut.config import UsageError

LossFn = Callable[..., Tensor]
"""``loss_fn(model, x0, generator=...) -> scalar``, e.g. an instance from :mod:`scoretut.losses`."""

CHECKPOINT_NAME = "ckpt.pt"
FORMAT = "scoretut-train-v1"

# Settings that may change between a run and its resumption without changing its meaning.
RESUMABLE_CHANGES = ("steps", "log_every", "ckpt_every", "progress")


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
        grad_clip: maximum global gradient norm, or ``None`` for no clipping.
        ema_decay: EMA decay ``d``.
        seed: seeds the data sampler, the loss noise and the global torch RNG.
        log_every: steps per entry of the loss history (mean over those steps) and per
            progress-bar update.
        ckpt_every: steps between checkpoints (0: only at the end); needs ``out_dir``.
        progress: show a tqdm bar (only when stderr is a terminal).
    """

    steps: int = 2000
    batch_size: int = 1024
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = 100
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # a checkpoint round trip may turn it into a list
        if self.steps < 0 or self.batch_size < 1 or self.log_every < 1 or self.ckpt_every < 0:
            raise UsageError("need steps >= 0, batch_size >= 1, log_every >= 1 and ckpt_every >= 0")
        if not self.lr > 0:
            raise UsageError(f"learning rate must be positive, got --lr {self.lr}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise UsageError(f"EMA decay must be in [0, 1], got --ema-decay {self.ema_decay}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UsageError(f"gradient clipping must be positive or off, got --grad-clip {self.grad_clip}")


@runtime_checkable
class Sampler(Protocol):
    """A resumable source of minibatches."""

    def sample(self, batch_size: int) -> Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorSampler:
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


class _IteratorSampler:
    """Adapts an iterator of batches; it has no state to save, so resumption is not exact."""

    def __init__(self, batches: Iterable[Tensor]):
        self.batches: Iterator[Tensor] = iter(batches)

    def sample(self, batch_size: int) -> Tensor:
        return next(self.batches)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        warnings.warn("resuming with a data iterator: the batches will differ from an uninterrupted run")


def as_sampler(data: Tensor | Sampler | Iterable[Tensor], seed: int) -> Sampler:
    """A tensor becomes a :class:`TensorSampler`; samplers pass through; iterables are wrapped."""
    if isinstance(data, Tensor):
        return TensorSampler(data, seed)
    if isinstance(data, Sampler):
        return data
    return _IteratorSampler(data)


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


def train(
    model: nn.Module,
    loss_fn: LossFn,
    data: Tensor | Sampler | Iterable[Tensor],
    cfg: TrainConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    config: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` steps of ``loss_fn(model, x0, generator=g)``.

    Args:
        model: the network being trained, already initialised (seed before building it).
        loss_fn: a loss from :mod:`scoretut.losses`, or any callable of that signature.
        data: a tensor ``(N, dim)`` to draw minibatches from (deterministic), a
            :class:`Sampler`, or an iterable of batches (not exactly resumable).
        cfg: optimisation settings (default :class:`TrainConfig()`).
        out_dir: directory for ``ckpt.pt``; ``None`` saves nothing.
        resume: continue from ``out_dir/ckpt.pt`` up to ``cfg.steps``.
        overwrite: allow replacing an existing checkpoint when not resuming.
        device: where to train (default: the model's device).
        config: plain metadata stored in the checkpoint (model config, SDE, loss, data set...),
            enough for the CLI to rebuild the model.

    Returns:
        a :class:`TrainResult`. Checkpoints (if ``out_dir``) are written every
        ``cfg.ckpt_every`` steps and at the end.
    """
    cfg = cfg or TrainConfig()
    config = dict(config or {})
    check_plain(config, "config")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ckpt = checkpoint_path(out_dir) if out_dir is not None else None
    if resume and ckpt is None:
        raise UsageError("--resume needs --out pointing at the run to continue")
    if ckpt is not None and ckpt.exists() and not (resume or overwrite):
        raise UsageError(f"{ckpt} already exists; pass --resume to continue it or choose another --out")
    if ckpt is not None and resume and not ckpt.exists():
        raise UsageError(f"--resume was given but {ckpt} does not exist; drop --resume to start afresh")

    torch.manual_seed(cfg.seed)
    model.to(device).train()
    sampler = as_sampler(data, cfg.seed)
    noise = torch.Generator(device).manual_seed(cfg.seed + 1)  # times/noise of the loss
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
    ema.update_parameters(model)  # first update copies: θ̄_0 = θ_0 (see module docstring)
    loop = _Loop(model, ema, opt, sampler, noise, cfg, config)
    if resume:
        loop.restore(load_checkpoint(ckpt, map_location="cpu"), ckpt)

    bar = tqdm(total=cfg.steps, initial=loop.step, disable=not (cfg.progress and sys.stderr.isatty()),
               desc="train", dynamic_ncols=True)  # fmt: skip
    with bar:
        while loop.step < cfg.steps:
            loop.one_step(loss_fn, device)
            bar.update(1)
            if loop.step % cfg.log_every == 0:
                bar.set_postfix(loss=f"{loop.flush_log():.4g}")
            if ckpt is not None and cfg.ckpt_every and loop.step % cfg.ckpt_every == 0:
                save_checkpoint(ckpt, loop.state())
    if ckpt is not None:
        save_checkpoint(ckpt, loop.state())
    model.eval()
    ema.module.eval()
    return TrainResult(model, ema.module, list(loop.history), loop.step)


class _Loop:
    """The mutable state of one run: one optimiser step at a time, and its checkpoint form."""

    def __init__(self, model: nn.Module, ema: AveragedModel, opt: torch.optim.Optimizer, sampler: Sampler,
                 noise: torch.Generator, cfg: TrainConfig, config: dict[str, Any]):  # fmt: skip
        self.model, self.ema, self.opt, self.sampler, self.noise = model, ema, opt, sampler, noise
        self.cfg, self.config = cfg, config
        self.step = 0
        self.history: list[tuple[int, float]] = []
        self.window_sum, self.window_count = 0.0, 0
        self._pending: list[Tensor] = []  # detached losses not yet moved to the host

    def lr_at(self, step: int) -> float:
        """Linear warm-up: ``lr · min(1, (step+1)/warmup)``."""
        return self.cfg.lr * (min(1.0, (step + 1) / self.cfg.warmup) if self.cfg.warmup > 0 else 1.0)

    def one_step(self, loss_fn: LossFn, device: torch.device) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        x0 = self.sampler.sample(self.cfg.batch_size).to(device)
        loss = loss_fn(self.model, x0, generator=self.noise)
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
        mean = self.window_sum / max(self.window_count, 1)
        if not math.isfinite(mean):
            raise UsageError(f"the loss became {mean} by step {self.step}; lower --lr or set --grad-clip")
        self.history.append((self.step, mean))
        self.window_sum, self.window_count = 0.0, 0
        return mean

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimiser, RNGs, history."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "noise": self.noise.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "ema_n_averaged": int(self.ema.n_averaged),
            "optimizer": self.opt.state_dict(),
            "rng": rng,
            "data": self.sampler.state_dict(),
            "history": [[s, v] for s, v in self.history],
            "window": [self.window_sum, self.window_count],
            # unlogged losses are kept as they are, so the window is summed in the same order
            "pending": torch.stack(self._pending).cpu() if self._pending else torch.zeros(0),
            "train_config": asdict(self.cfg),
            "config": self.config,
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        """Inverse of :meth:`state`; raises :class:`UsageError` if the run does not match."""
        if state.get("format") != FORMAT:
            raise UsageError(f"{path} is not a scoretut training checkpoint; choose another --out")
        if state["config"] != self.config:
            raise UsageError(f"{path} was trained with a different configuration; "
                             "resume with the same settings or choose another --out")  # fmt: skip
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
                             "use the same model settings or another --out") from None  # fmt: skip
        self.ema.n_averaged.fill_(state["ema_n_averaged"])
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        self.noise.set_state(state["rng"]["noise"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.sampler.load_state_dict(state["data"])
        self.step = int(state["step"])
        self.history = [(int(s), float(v)) for s, v in state["history"]]
        self.window_sum, self.window_count = float(state["window"][0]), int(state["window"][1])
        device = next(self.model.parameters()).device
        self._pending = list(state.get("pending", torch.zeros(0)).to(device).unbind())
