"""DDPM on images end to end: recipe → U-Net → ε-loss with label dropout → guided sampling.

The process is DDPM's (Ho et al. 2020): ``T = 1000`` steps of the linear β schedule from 1e-4
to 0.02 (or the cosine one), as :class:`scoretut.schedules.DiscreteVP`. The network
:class:`scoretut.nets.unet.UNet` predicts the noise, ``ε_θ(x_t, t, y)``, and is trained with

.. math::  \\mathcal L = \\mathbb E_{t, x_0, \\varepsilon, y}\\,
           \\big\\|\\varepsilon - \\varepsilon_\\theta(\\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\varepsilon,\\ t,\\ \\tilde y)\\big\\|^2,
           \\qquad t \\sim \\mathcal U\\{1, …, T\\}

(Ho et al. 2020, Eq. 14 — :class:`scoretut.losses.DSMLoss` with ``λ = std²`` on DDPM's steps),
where ``ỹ`` is the label replaced by the null label 0 with probability ``p_drop`` (0.1):
one network learns both the conditional and the unconditional noise (Ho & Salimans 2022).
With ``min_snr_gamma = γ`` in the recipe, each step's term is weighted by ``min(SNR_t, γ)/SNR_t``
(:func:`scoretut.losses.min_snr_weighting`, Hang et al. 2023): the nearly clean steps count less,
the noisy ones that decide a sample's content keep their weight. DDPM's plain loss (no ``γ``) is
the default the CLI trains.

Classifier-free guidance with scale ``w`` samples with

.. math::  \\hat\\varepsilon = \\varepsilon_\\theta(x, t, 0) + w\\,\\big(\\varepsilon_\\theta(x, t, y) - \\varepsilon_\\theta(x, t, 0)\\big),

so ``w = 0`` is unconditional, ``w = 1`` plainly conditional, and ``w > 1`` pushes samples
towards what makes them recognisably class ``y`` (the course's 7.5 means ``w = 7.5``; Ho &
Salimans write the same rule as ``(1 + w')ε_c − w'ε_u`` with ``w' = w − 1``). The samplers are
the shared ones of :mod:`scoretut.sampling` (``ddpm`` ancestral with ``β̃``, ``ddim`` with
``η``), which take the score ``−ε̂/√(1−ᾱ_t)``; the estimate ``x̂_0`` is clipped to ``[−1, 1]``
at every step, as Ho et al. do for images.

A *recipe* (plain dict, stored in each checkpoint) says how to rebuild the model: image size,
class names, schedule and network sizes. :func:`fit` trains one on an AFHQ-layout folder
(:mod:`scoretut.data.images`) with :func:`scoretut.train.train`, and :class:`TrainingFiles`
writes a sample grid and the loss curve while it runs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from scoretut import distributed
from scoretut.checkpoint import atomic_write
from scoretut.data.images import NULL_LABEL, ImageBatches, ImageFolder, to_bytes
from scoretut.errors import UsageError
from scoretut.losses import DSMLoss, min_snr_weighting
from scoretut.nets.unet import UNet
from scoretut.parametrisation import Prediction
from scoretut.pipelines.recipes import read
from scoretut.runtime import resolve_device
from scoretut.sampling import Generated, ddim, ddpm, run_steps
from scoretut.schedules import BETA_SCHEDULES, DiscreteVP, ddpm_timesteps
from scoretut.train import TrainConfig, TrainResult, train

COURSE_NET: dict[str, Any] = dict(ch=128, ch_mult=[1, 2, 2, 2], num_res_blocks=4, attn_levels=[1], dropout=0.1,
                                  groups=32)  # fmt: skip
"""The course's 64×64 AFHQ U-Net: 128 base channels, multipliers 1-2-2-2, attention at 32×32."""

NETS: dict[str, dict[str, Any]] = {
    "full": COURSE_NET,
    "small": dict(ch=64, ch_mult=[1, 2, 2, 2], num_res_blocks=2, attn_levels=[1], dropout=0.1, groups=32),
    "tiny": dict(ch=32, ch_mult=[1, 2, 2], num_res_blocks=1, attn_levels=[1], dropout=0.1, groups=8),
}
"""U-Net sizes by name: the course network, and smaller ones for quick GPU runs and the CPU."""

KIND = "ddpm-image"
"""The ``kind`` of this pipeline's checkpoints."""

TRAINING: dict[str, Any] = dict(batch_size=32, lr=2e-4, warmup=5000, ema_decay=0.9999, grad_clip=1.0)
"""Optimisation defaults for AFHQ (Ho et al. 2020: Adam 2e-4 with 5000 warm-up steps, EMA 0.9999,
gradient clipping at 1)."""

PROXY_CPU_TRAINING: dict[str, Any] = dict(net="tiny", batch_size=64, lr=3e-3, warmup=50, lr_floor=0.05,
                                          ema_decay=0.99)  # fmt: skip
"""The AFHQ chapter's CPU settings on the 16×16 proxy (which spells them out), for :func:`fit`
with ``decay_steps`` set to the run's steps: batches of 64 keep two cores busier than 16, and
an EMA of 0.99 leaves 0.03 % of the initial weights after its 800 steps."""

def make_recipe(classes: Sequence[str], image_size: int = 64, net: str | dict[str, Any] = "full",
                schedule: str = "linear", T: int = 1000, cfg_drop: float = 0.1, conditional: bool = True,
                min_snr_gamma: float | None = None) -> dict:  # fmt: skip
    """A recipe for ``classes`` (label ``k + 1`` is ``classes[k]``); ``conditional=False`` trains
    without labels (no class embedding, no guidance); ``min_snr_gamma`` weights the loss by
    min-SNR-γ (module docstring), and is stored only when given, so DDPM's recipes are unchanged."""
    if min_snr_gamma is not None and not min_snr_gamma > 0:
        raise UsageError(f"`min_snr_gamma` must be positive (5 is Hang et al.'s choice), got {min_snr_gamma}")
    if schedule not in BETA_SCHEDULES:
        raise UsageError(f"unknown schedule {schedule!r}; choose one of: {', '.join(BETA_SCHEDULES)}")
    if isinstance(net, str):
        if net not in NETS:
            raise UsageError(f"unknown network size {net!r}; choose one of: {', '.join(NETS)}")
        net = NETS[net]
    if not 0.0 <= cfg_drop < 1.0:
        raise UsageError(f"the label-drop probability must be in [0, 1), got `cfg_drop` {cfg_drop}")
    factor = 2 ** (len(net["ch_mult"]) - 1)
    if image_size % factor:
        raise UsageError(f"`image_size` {image_size} must be divisible by {factor} for this U-Net")
    net = {**copy.deepcopy(net), "num_classes": len(classes) if conditional else 0}
    recipe = {"image_size": int(image_size), "classes": list(classes), "schedule": schedule, "T": int(T),
              "net": net, "cfg_drop": float(cfg_drop) if conditional else 0.0}  # fmt: skip
    if min_snr_gamma is not None:
        recipe["min_snr_gamma"] = float(min_snr_gamma)
    return recipe


def make_sde(recipe: dict[str, Any]) -> DiscreteVP:
    """The recipe's DDPM chain (linear β 1e-4 → 0.02, or cosine)."""
    return getattr(DiscreteVP, recipe["schedule"])(recipe["T"])


def build(recipe: dict[str, Any]) -> UNet:
    """A freshly initialised U-Net of the recipe (seed the global RNG first)."""
    return UNet(**recipe["net"])


def label_tensor(recipe: dict[str, Any], labels: int | str | Sequence[int] | Tensor | None, n: int,
                 cfg_scale: float = 1.0) -> Tensor | None:  # fmt: skip
    """Labels ``(n,)`` for sampling: a class name or label for all, one per sample, or ``None`` —
    the classes in turn ``1, 2, …, K, 1, …`` for a conditional model, no labels otherwise (and
    then no guidance: ``cfg_scale`` must be 1)."""
    k = recipe["net"]["num_classes"]
    if k == 0:
        if labels is not None:
            raise UsageError("this model was trained without labels (no `cfg`); drop `label` and `cfg_scale`")
        if cfg_scale != 1.0:
            raise UsageError("guidance needs a model trained with labels (`cfg`); drop `cfg_scale`")
        return None
    if labels is None:
        return torch.arange(n) % k + 1
    if isinstance(labels, str):
        if labels not in recipe["classes"]:
            raise UsageError(f"unknown class {labels!r}; choose one of: {', '.join(recipe['classes'])}")
        labels = recipe["classes"].index(labels) + 1
    y = torch.as_tensor(labels, dtype=torch.long).flatten()
    y = y.expand(n) if y.numel() == 1 else y
    if y.numel() != n or bool(((y < 0) | (y > k)).any()):
        raise UsageError(f"need {n} labels in 0..{k}, got {labels!r}")
    return y.clone()


# -- training ------------------------------------------------------------------------------------
class NoiseLoss:
    """DDPM's ε-loss with classifier-free label dropout (module docstring).

    ``loss(model, batch, generator)`` with ``batch = (x_0, y)`` (or ``x_0`` alone for an
    unconditional model) and ``model(x, t, y)`` the noise-prediction network. The label of each
    example becomes :data:`~scoretut.data.images.NULL_LABEL` with probability ``p_drop`` (drawn
    from ``generator``); the rest is :class:`scoretut.losses.DSMLoss` on
    :class:`~scoretut.schedules.DiscreteVP` over the steps ``1..T`` with ``λ = std²``, which is
    exactly ``‖ε − ε̂‖²`` summed over pixels and averaged over the batch. With
    ``use_labels=False`` (an unconditional network) the labels are ignored. With
    ``min_snr_gamma = γ`` the term of step ``t`` is weighted by ``min(SNR_t, γ)/SNR_t``
    (:func:`scoretut.losses.min_snr_weighting`).
    """

    def __init__(self, sde: DiscreteVP, p_drop: float = 0.1, use_labels: bool = True,
                 min_snr_gamma: float | None = None):  # fmt: skip
        self.sde, self.p_drop, self.use_labels = sde, float(p_drop), use_labels
        weighting = "std2" if min_snr_gamma is None else min_snr_weighting(sde, min_snr_gamma)
        self.dsm = DSMLoss(sde, weighting=weighting, t_grid=sde.train_grid())

    @classmethod
    def of(cls, recipe: dict[str, Any]) -> "NoiseLoss":
        """The training loss of a recipe: its chain, label dropout and weighting."""
        return cls(make_sde(recipe), recipe["cfg_drop"], use_labels=recipe["net"]["num_classes"] > 0,
                   min_snr_gamma=recipe.get("min_snr_gamma"))  # fmt: skip

    def __call__(self, model: Callable[..., Tensor], batch: Tensor | Sequence[Tensor],
                 generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        x0, y = (batch, None) if isinstance(batch, Tensor) else batch
        y = y if self.use_labels else None
        if y is not None and self.p_drop > 0:
            drop = torch.rand(y.shape, generator=generator, device=y.device) < self.p_drop
            y = torch.where(drop, torch.full_like(y, NULL_LABEL), y)
        return self.dsm(Prediction(self.sde, lambda x, t: model(x, t, y), "eps"), x0, generator)


def grid_image(images: Tensor, nrow: int = 8, pad: int = 2, scale: int = 1) -> "np.ndarray":
    """Images ``(n, 3, H, W)`` in ``[−1, 1]`` tiled row by row into one ``uint8`` array
    ``(rows·(H+pad)+pad, nrow·(W+pad)+pad, 3)`` on white, each pixel repeated ``scale`` times."""
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    canvas = torch.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i, img in enumerate(to_bytes(images.cpu())):
        r, col = divmod(i, nrow)
        canvas[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    canvas = canvas.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return canvas.permute(1, 2, 0).numpy()


def grid_png(images: Tensor, nrow: int = 8, pad: int = 2, scale: int = 1) -> bytes:
    """:func:`grid_image` as PNG bytes (a frame for :func:`scoretut.viz.frames_widget`)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid_image(images, nrow, pad, scale)).save(buf, format="PNG")
    return buf.getvalue()


def save_grid(images: Tensor, path: str | os.PathLike, nrow: int = 8, pad: int = 2) -> Path:
    """Write images ``(n, 3, H, W)`` in ``[−1, 1]`` as one PNG grid of ``nrow`` columns (atomic)."""
    from PIL import Image

    canvas = grid_image(images, nrow, pad)
    path = Path(path)
    atomic_write(path, lambda p: Image.fromarray(canvas).save(p, format="PNG"))
    return path


def plot_history(history: Sequence[tuple[int, float]], path: str | os.PathLike) -> Path:
    """The loss curve (log scale) of a training history as a PNG (atomic)."""
    from scoretut.viz import new_figure

    fig, ax = new_figure((5.0, 3.2), {"left": 0.15, "bottom": 0.16, "right": 0.96, "top": 0.92})
    steps, losses = zip(*history) if history else ((), ())
    ax.plot(steps, losses, lw=1.2)
    ax.set(xlabel="step", ylabel="ε-loss (mean per window)", yscale="log" if history else "linear")
    ax.grid(alpha=0.3)
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    return path


class TrainingFiles:
    """A :func:`~scoretut.train.train` callback that writes, every ``every`` steps, a grid of
    ``n`` samples of the EMA model (``samples_STEP.png``, same noise each time, so grids can be
    compared) and the loss curve so far (``loss.png``) into ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike, recipe: dict[str, Any], every: int, n: int = 16,
                 sampler: str = "ddim", steps: int = 20, cfg_scale: float = 1.0, seed: int = 0):  # fmt: skip
        self.out, self.recipe, self.every, self.n = Path(out_dir), recipe, every, n
        self.options = dict(sampler=sampler, steps=steps, cfg_scale=cfg_scale, seed=seed)
        self.written: list[Path] = []

    def __call__(self, result: TrainResult) -> None:
        if self.every <= 0 or result.step % self.every:
            return
        self.written.append(plot_history(result.history, self.out / "loss.png"))
        ema = result.ema
        was_training = ema.training
        ema.eval()
        try:
            device = next(ema.parameters()).device
            x = generate(ema, self.recipe, self.n, device=device, **self.options).x
        finally:
            ema.train(was_training)
        self.written.append(save_grid(x, self.out / f"samples_{result.step:07d}.png", nrow=min(8, self.n)))


def training_config(steps: int, seed: int = 0, sample_every: int = 0, **train_options: Any) -> TrainConfig:
    """The :class:`~scoretut.train.TrainConfig` of :func:`fit` (:data:`TRAINING` with the
    overrides), checked before any data is read; ``sample_every`` must be a multiple of its
    ``log_every``."""
    opts = {**TRAINING, "seed": seed, **train_options}
    opts.setdefault("log_every", max(1, min(100, steps // 20 or 1)))
    cfg = TrainConfig(steps=steps, **opts)
    if sample_every and sample_every % cfg.log_every:
        raise UsageError(f"`sample_every` {sample_every} must be a multiple of `log_every` {cfg.log_every}")
    return cfg


def fit(
    data: str | os.PathLike | ImageFolder,
    steps: int,
    *,
    out_dir: str | os.PathLike | None = None,
    image_size: int = 64,
    net: str | dict[str, Any] = "full",
    conditional: bool = True,
    cfg_drop: float = 0.1,
    min_snr_gamma: float | None = None,
    schedule: str = "linear",
    T: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    resume: bool = False,
    limit: int | None = None,
    sample_every: int = 0,
    callback: Callable[[TrainResult], None] | None = None,
    **train_options: Any,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train a DDPM on the ``train`` split of an AFHQ-layout folder; return ``(result, recipe)``.

    ``data`` is the folder (or an already loaded :class:`ImageFolder`); ``train_options`` are
    :class:`~scoretut.train.TrainConfig` fields overriding :data:`TRAINING` (``batch_size``,
    ``lr``, ``amp``, ``compile``, ...). In a ``torchrun`` process group each rank reads its own
    shard of the data. With ``out_dir`` the checkpoint goes to ``out_dir/ckpt.pt`` and, every
    ``sample_every`` steps, :class:`TrainingFiles` writes sample grids and the loss curve.
    ``device=None`` means :func:`scoretut.default_device`; :func:`gpu_options` gives the
    CLI's speed options (bf16 autocast, channels-last) for a CUDA device.
    """
    cfg = training_config(steps, seed, sample_every if out_dir is not None else 0, **train_options)
    dataset = data if isinstance(data, ImageFolder) else ImageFolder(data, "train", image_size, limit=limit)
    recipe = make_recipe(dataset.classes, dataset.size, net, schedule, T, cfg_drop, conditional, min_snr_gamma)
    rank, world = distributed.world()
    batches = ImageBatches(dataset, seed=seed, rank=rank, world_size=world)
    torch.manual_seed(seed)
    model = build(recipe)
    callbacks = [c for c in (callback,) if c is not None]
    if sample_every and out_dir is not None:
        callbacks.append(TrainingFiles(out_dir, recipe, sample_every, seed=seed))
    loss = NoiseLoss.of(recipe)
    result = train(model, loss, batches, cfg, out_dir=out_dir, resume=resume,
                   device=resolve_device(device), config={"kind": KIND, "recipe": recipe},
                   callback=(lambda r: [c(r) for c in callbacks]) if callbacks else None)  # fmt: skip
    return result, recipe


def load_run(path: str | os.PathLike) -> tuple[TrainResult, dict[str, Any]]:
    """A checkpoint of :func:`fit` as ``(result, recipe)``, the pair :func:`fit` returns: the raw
    and the EMA network rebuilt from the stored recipe (in eval mode, on the CPU), the loss
    history and the step count."""
    state, recipe = read(path, KIND, "scoretut ddpm train")  # staged on the host, moved by generate()
    model, ema = build(recipe), build(recipe)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    history = [(int(s), float(v)) for s, v in state.get("history", [])]
    return TrainResult(model.eval(), ema.eval(), history, int(state["step"])), recipe


def load(path: str | os.PathLike, *, ema: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, recipe)`` from a checkpoint of :func:`fit`: the EMA network (the raw one with
    ``ema=False``), in eval mode on the CPU."""
    result, recipe = load_run(path)
    return (result.ema if ema else result.model), recipe


def gpu_options(device: str | torch.device | None = None) -> dict[str, Any]:
    """The speed options ``amp="bf16", channels_last=True`` of ``scoretut ddpm train``, for ``fit``:
    ``{"amp": "bf16", "channels_last": True}`` on a CUDA device, ``{}`` (float32) elsewhere."""
    return {"amp": "bf16", "channels_last": True} if resolve_device(device).type == "cuda" else {}


def empirical_posterior_mean(x_t: Tensor, alpha: float, std: float, data: Tensor, chunk: int = 256) -> Tensor:
    """``E[x_0 | x_t]`` when ``x_0`` is uniform over the ``N`` images ``data``: the exact denoiser of
    a finite training set, the softmax-weighted mean

    .. math::  \\hat x_0(x_t) = \\sum_i w_i\\, x^{(i)}, \\qquad
               w_i \\propto \\exp\\big(-\\|x_t - \\alpha\\,x^{(i)}\\|^2 / 2\\sigma_t^2\\big),

    for ``x_t = α x_0 + σ_t ε`` (one ``α``, ``σ_t`` for the batch). On noisy training images its
    error is the smallest that any network can reach on the training objective at that noise
    level; a network that generalises does worse at small ``σ_t``, where this one recognises the
    training image. Computed in float64.
    """
    ref = data.flatten(1).double()
    out = []
    for xb in x_t.flatten(1).double().split(chunk):
        d2 = torch.cdist(xb, alpha * ref) ** 2
        out.append(torch.softmax(-d2 / (2 * std**2), dim=1) @ ref)
    return torch.cat(out).to(x_t.dtype).view_as(x_t)


# -- sampling ------------------------------------------------------------------------------------
def guided_noise(model: nn.Module, y: Tensor | None, scale: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """``ε̂(x, t) = ε(x, t, 0) + w (ε(x, t, y) − ε(x, t, 0))`` with ``w = scale`` (module docstring).

    ``scale = 1`` (or ``y = None``) calls the network once; otherwise the conditional and the
    unconditional inputs go through it as one batch of ``2B``.
    """

    def eps(x: Tensor, t: Tensor) -> Tensor:
        if y is None or scale == 1.0:
            return model(x, t, y)
        null = torch.full_like(y, NULL_LABEL)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return uncond + scale * (cond - uncond)

    return eps


@torch.no_grad()
def generate(
    model: nn.Module,
    recipe: dict[str, Any],
    n: int,
    *,
    labels: int | str | Sequence[int] | Tensor | None = None,
    sampler: str = "ddim",
    steps: int | None = None,
    cfg_scale: float = 1.0,
    eta: float = 0.0,
    clip_x0: float | None = 1.0,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    trajectory_every: int | None = None,
) -> Generated:
    """``n`` images ``(n, 3, H, W)`` in ``[−1, 1]`` from the DDPM ``model`` (in eval mode), as
    :class:`~scoretut.sampling.Generated` ``(x, nfe, trajectory)``.

    ``sampler`` is ``"ddpm"`` (ancestral, ``β̃`` variance) or ``"ddim"`` (``eta``); ``steps``
    defaults to ``T`` for ``ddpm`` and 50 for ``ddim`` (evenly respaced integer steps, ending at
    ``t = 0``). ``labels`` as in :func:`label_tensor`; ``cfg_scale`` is the guidance scale
    ``w``. The start noise and the sampler noise come from one generator seeded with ``seed``,
    used batch after batch of ``batch_size`` (default: all at once). ``nfe`` counts network
    evaluations per image: one per step, two with guidance (``cfg_scale ≠ 1``). With
    ``trajectory_every = k`` the images come in one batch and ``trajectory`` holds every
    ``k``-th state ``(t, x)`` (the start included) and the last, unclamped, on the CPU. The
    model runs on ``device`` (``None``: :func:`scoretut.default_device`); everything returned
    is on the CPU.
    """
    if n < 1:
        raise UsageError(f"the number of images must be positive, got `n` {n}")
    if sampler not in ("ddpm", "ddim"):
        raise UsageError(f"unknown image sampler {sampler!r}; choose ddpm or ddim")
    options = {"eta": eta} if sampler == "ddim" else {}
    fn = ddim if sampler == "ddim" else ddpm
    sde = make_sde(recipe)
    steps = steps or (recipe["T"] if sampler == "ddpm" else 50)
    ts = ddpm_timesteps(sde, steps)
    y_all = label_tensor(recipe, labels, n, cfg_scale)
    device = resolve_device(device)
    model = model.to(device).eval()
    size, channels = recipe["image_size"], recipe["net"].get("channels", 3)
    gen = torch.Generator(device).manual_seed(seed)
    batch_size = n if trajectory_every is not None else (batch_size or n)
    out, trajectory = [], None
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        y = None if y_all is None else y_all[start : start + b].to(device)
        eps = Prediction(sde, guided_noise(model, y, cfg_scale), "eps")
        x = torch.randn((b, channels, size, size), generator=gen, device=device)
        x, trajectory = run_steps(fn(sde, eps, x, ts, generator=gen, clip_x0=clip_x0, **options), trajectory_every)
        out.append(x.clamp(-1, 1).cpu())
    guided = y_all is not None and cfg_scale != 1.0
    return Generated(torch.cat(out), (len(ts) - 1) * (2 if guided else 1), trajectory)
