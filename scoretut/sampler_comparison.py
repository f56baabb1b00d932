"""Sample quality against cost: every sampler on one model, at matched numbers of network calls.

The cost of a sampler is its number of score (network) evaluations, NFE; its quality is, for
2-D points, the chunked Chamfer distance and EMD of :func:`scoretut.metrics.evaluate_samples`
against exact draws of the data, or any metrics an ``evaluate(samples)`` function returns (a
Fréchet distance for images, ``benchmarks/image_sampler_comparison.py``). :func:`compare` runs each :class:`SamplerSpec` at the largest number of
steps that fits each NFE budget, all on the same time grid (by default the ρ = 7 grid of
:func:`scoretut.sampling.timesteps`; any ``grid(sde, steps)`` function works), from the same prior draw, and scores them against the
same target sample. :func:`reference` is the yardstick: ancestral (DDPM) sampling with many
steps. :func:`table` and :func:`plot` show the result.

Cost per step: Euler–Maruyama, ODE Euler, DDIM, DDPM and EDM-Euler 1; predictor–corrector
``1 + n_corrector``; Heun (``ode_heun``, ``edm``) 2, except that a grid ending at ``σ = 0``
(the EDM SDE) saves the last correction, so ``n`` Heun steps cost ``2n − 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from scoretut.errors import UsageError
from scoretut.metrics import evaluate_samples
from scoretut.parametrisation import prediction_of
from scoretut.runtime import resolve_device
from scoretut.sampling import get_sampler, sample, steps_for_nfe, timesteps
from scoretut.sde import SDE, ScoreFn


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler with fixed options, e.g. ``SamplerSpec("EDM + churn", "edm", {"S_churn": 10})``."""

    label: str
    sampler: str
    options: dict[str, Any] = field(default_factory=dict)

    def steps(self, sde: SDE, nfe: int, grid: Grid = "karras") -> int:
        """The most steps whose cost is at most ``nfe`` (0 if not even one step fits); a Heun step
        that lands on ``σ = 0`` costs one evaluation (:func:`scoretut.sampling.steps_for_nfe`)."""
        ends_at_zero = float(sde.std(torch.as_tensor(make_grid(sde, 2, grid)[-1]))) == 0.0
        return steps_for_nfe(self.sampler, nfe, self.options, saves_last=ends_at_zero)

    def run(self, sde: SDE, score_fn: ScoreFn, x: Tensor, steps: int, *, seed: int = 0, grid: Grid = "karras"):
        """Sample from the prior draw ``x`` with ``steps`` steps; returns ``(samples, NFE counted)``.
        ``score_fn`` may be any model :func:`~scoretut.parametrisation.prediction_of` accepts."""
        model = prediction_of(sde, score_fn)
        nfe_before = model.nfe
        gen = torch.Generator(x.device).manual_seed(seed)
        ts = make_grid(sde, steps, grid)
        y = sample(get_sampler(self.sampler), sde, model, x, ts, generator=gen, **self.options)
        return y, model.nfe - nfe_before


SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("Euler–Maruyama", "em"),
    SamplerSpec("predictor–corrector", "pc"),
    SamplerSpec("PF-ODE Euler", "ode_euler"),
    SamplerSpec("PF-ODE Heun", "ode_heun"),
    SamplerSpec("DDIM (η = 0)", "ddim"),
    SamplerSpec("EDM Heun", "edm"),
    SamplerSpec("EDM Heun + churn", "edm", {"S_churn": 5.0}),
)
"""The samplers of the comparison. The churn setting is :func:`compare`'s default only."""

REFERENCE = SamplerSpec("ancestral (DDPM)", "ddpm")

Grid = str | Callable[[SDE, int], Tensor]
"""A time grid: a :func:`scoretut.sampling.timesteps` kind, or ``grid(sde, steps) -> ts``."""

Evaluate = Callable[[Tensor], dict[str, float]]
"""``evaluate(samples) -> {metric: value}``; lower is better for every metric."""


def make_grid(sde: SDE, steps: int, grid: Grid) -> Tensor:
    """The decreasing times of ``steps`` sampler steps on ``grid``."""
    return grid(sde, steps) if callable(grid) else timesteps(sde, steps, grid)


def _score_row(spec: SamplerSpec, steps: int, nfe: int, metrics: dict[str, float]) -> dict[str, Any]:
    return {"label": spec.label, "sampler": spec.sampler, "steps": steps, "nfe": nfe, **metrics}


def point_metrics(data: str, seed: int = 0) -> Evaluate:
    """Chunked Chamfer distance and EMD of 2-D samples against exact draws of ``data``."""

    def evaluate(x: Tensor) -> dict[str, float]:
        return evaluate_samples(x.detach().cpu().float(), data, seed=seed)  # chunks of 100 points

    return evaluate


def prior_draw(sde: SDE, n: int, seed: int, device: torch.device | str | None = None) -> Tensor:
    """The common starting points ``x_T ~ N(0, prior_std² I)`` of shape ``(n, 2)`` on ``device``
    (``None``: :func:`scoretut.default_device`)."""
    if n <= 0 or n % 100:
        raise UsageError(f"the number of samples must be a positive multiple of 100 (chunks of 100), got {n}")
    device = resolve_device(device)
    return sde.prior_sampling((n, 2), generator=torch.Generator(device).manual_seed(seed), device=device)


def _device_of(score_fn: ScoreFn) -> torch.device | None:
    """The device of a score network's parameters (``None`` for a plain function)."""
    params = score_fn.parameters() if isinstance(score_fn, torch.nn.Module) else iter(())
    return next((p.device for p in params), None)


def _setup(sde, n, data, seed, x, evaluate, score_fn=None) -> tuple[Tensor, Evaluate]:
    if x is None:
        if n is None:
            raise UsageError("give the number of samples n (2-D points) or a prior draw x")
        x = prior_draw(sde, n, seed, _device_of(score_fn))
    if evaluate is None:
        if data is None:
            raise UsageError("give the data set name (for CD/EMD) or an evaluate function")
        evaluate = point_metrics(data, seed)
    return x, evaluate


def reference(sde: SDE, score_fn: ScoreFn, *, n: int | None = None, data: str | None = None, steps: int = 1000,
              seed: int = 0, grid: Grid = "karras", spec: SamplerSpec = REFERENCE, x: Tensor | None = None,
              evaluate: Evaluate | None = None) -> dict[str, Any]:  # fmt: skip
    """Score ``spec`` (default: ancestral sampling) at ``steps`` steps: the quality to match.

    As in :func:`compare`, either ``n`` and ``data`` (2-D points, CD and EMD) or a prior draw
    ``x`` and an ``evaluate`` function.
    """
    x, evaluate = _setup(sde, n, data, seed, x, evaluate, score_fn)
    y, nfe = spec.run(sde, score_fn, x, steps, seed=seed, grid=grid)
    return _score_row(spec, steps, nfe, evaluate(y))


def compare(
    sde: SDE,
    score_fn: ScoreFn,
    budgets: tuple[int, ...] | list[int],
    *,
    n: int | None = None,
    data: str | None = None,
    specs: tuple[SamplerSpec, ...] | list[SamplerSpec] = SPECS,
    seed: int = 0,
    grid: Grid = "karras",
    x: Tensor | None = None,
    evaluate: Evaluate | None = None,
) -> list[dict[str, Any]]:
    """Every spec at every NFE budget (rows with ``label, sampler, steps, nfe`` and the metrics).

    All runs start from the same prior draw and use the same noise seed and target sample;
    budgets too small for one step of a sampler, or giving the same steps as a smaller budget,
    are skipped. For 2-D points give ``n`` and ``data`` (the metrics are ``cd, emd`` and their
    floor ratios); for anything else give the prior draw ``x`` and ``evaluate(samples)``.
    A prior draw made here lives on the score network's device (:func:`scoretut.default_device`
    for a plain function).
    """
    x, evaluate = _setup(sde, n, data, seed, x, evaluate, score_fn)
    rows = []
    for spec in specs:
        done = set()
        for budget in budgets:
            steps = spec.steps(sde, budget, grid)
            if steps < 1 or steps in done:
                continue
            done.add(steps)
            y, nfe = spec.run(sde, score_fn, x, steps, seed=seed, grid=grid)
            rows.append(_score_row(spec, steps, nfe, evaluate(y)))
    return rows


def table(rows: list[dict[str, Any]], ref: dict[str, Any] | None = None,
          metrics: tuple[str, ...] = ("cd", "emd")) -> str:  # fmt: skip
    """A Markdown table; with ``ref`` it adds each metric divided by the reference's."""
    names = [m.upper() for m in metrics]
    head = "| sampler | steps | NFE | " + " | ".join(names) + " |"
    if ref:
        head += "".join(f" {m} / ref |" for m in names)
    lines = [head, "|" + "---|" * (3 + len(metrics) * (1 + bool(ref)))]
    for r in ([ref] if ref else []) + rows:
        line = f"| {r['label']} | {r['steps']} | {r['nfe']} |" + "".join(f" {r[m]:.4f} |" for m in metrics)
        if ref:
            line += "".join(f" {r[m] / ref[m]:.3f} |" for m in metrics)
        lines.append(line)
    return "\n".join(lines)


def best_within(rows: list[dict[str, Any]], ref: dict[str, Any], factor: float = 1.1,
                metrics: tuple[str, ...] = ("cd", "emd")) -> dict[str, Any] | None:  # fmt: skip
    """The cheapest row whose every metric is within ``factor`` × the reference's, or None."""
    good = [r for r in rows if all(r[m] <= factor * ref[m] for m in metrics)]
    return min(good, key=lambda r: (r["nfe"], r[metrics[-1]])) if good else None


TITLES = {"emd": "EMD", "cd": "Chamfer distance"}


def plot(rows: list[dict[str, Any]], ref: dict[str, Any] | None = None, figsize=(9.0, 3.4),
         metrics: tuple[str, ...] = ("emd", "cd")):  # fmt: skip
    """Each metric against NFE (log axes), one line per sampler; the reference as a dashed line."""
    from scoretut.viz import new_figure

    fig, ax = new_figure(figsize, margins={"left": 0.08, "right": 0.78, "bottom": 0.15, "top": 0.9, "wspace": 0.3})
    fig.delaxes(ax)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, key in zip(axes, metrics):
        for label in dict.fromkeys(r["label"] for r in rows):
            pts = sorted((r["nfe"], r[key]) for r in rows if r["label"] == label)
            ax.plot(*np.array(pts).T, marker="o", ms=3, label=label)
        if ref:
            ax.axhline(ref[key], color="k", ls="--", lw=1, label=f"{ref['label']}, {ref['nfe']} NFE")
            ax.axhline(1.1 * ref[key], color="0.5", ls=":", lw=1, label="1.1 × reference")
        ax.set(xscale="log", yscale="log", xlabel="NFE", title=TITLES.get(key, key))
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig
