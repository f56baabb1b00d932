"""DDPM on images: the ε-loss with label dropout, classifier-free guidance, generation, training files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from scoretut.errors import UsageError
from scoretut.data.images import ImageFolder, to_bytes, write_proxy
from scoretut.pipelines.images import (NoiseLoss, build, fit, generate, guided_noise, label_tensor, make_recipe,
                                       make_sde, save_grid)
from scoretut.schedules import DiscreteVP

TINY = dict(ch=8, ch_mult=[1, 2], num_res_blocks=1, attn_levels=[1], dropout=0.0, groups=4)


def recipe(conditional: bool = True, **kw) -> dict:
    return make_recipe(["a", "b", "c"], image_size=8, net=TINY, conditional=conditional, **kw)


class ExactEps(nn.Module):
    """The exact noise predictor for data that is the constant image ``c_y`` given label ``y``:
    ``ε*(x, t, y) = (x − √ᾱ_t c_y)/√(1 − ᾱ_t)`` (the posterior of x_0 is a point mass)."""

    def __init__(self, sde: DiscreteVP, constants: list[float]):
        super().__init__()
        self.sde, self.c = sde, torch.tensor(constants)
        self.calls = 0

    def forward(self, x, t, y=None):
        self.calls += 1
        c = self.c[0 if y is None else y].to(x)[:, None, None, None]
        return (x - self.sde.scale(t)[:, None, None, None] * c) / self.sde.std(t)[:, None, None, None]


def test_eps_loss_is_zero_for_the_exact_noise_and_the_dimension_for_zero():
    sde = DiscreteVP.linear()
    loss = NoiseLoss(sde, p_drop=0.0)
    x0 = torch.zeros(256, 3, 4, 4)
    y = torch.ones(256, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    exact = ExactEps(sde, [0.0, 0.0])
    assert float(loss(exact, (x0, y), g)) == pytest.approx(0.0, abs=1e-8)
    # predicting ε̂ = 0 leaves E‖ε‖² = D = 48; the batch mean of χ²_48 has sd √(2·48/256) ≈ 0.6
    zero = float(loss(lambda x, t, y: torch.zeros_like(x), (x0, y), g))
    assert zero == pytest.approx(48.0, abs=4 * (2 * 48 / 256) ** 0.5)


def test_min_snr_recipe_weights_each_step_by_min_snr_over_snr():
    """With ε̂ = 0 the residual is ε, so the loss is D·mean_t min(SNR_t, γ)/SNR_t over t = 1..T;
    without γ the recipe is DDPM's (no key stored) and the weight is 1."""
    assert "min_snr_gamma" not in recipe()
    r = recipe(min_snr_gamma=5.0)
    loss = NoiseLoss.of({**r, "cfg_drop": 0.0})
    sde = DiscreteVP.linear()
    t = sde.train_grid()
    snr = sde.scale(t) ** 2 / sde.std(t) ** 2
    want = 48 * float((snr.clamp(max=5.0) / snr).mean())  # ≈ 0.91·48: steps with SNR > 5 count less
    x0 = torch.zeros(20_000, 3, 4, 4)
    got = float(loss(lambda x, t, y: torch.zeros_like(x), (x0, torch.ones(20_000, dtype=torch.long)),
                     torch.Generator().manual_seed(0)))  # fmt: skip
    assert got == pytest.approx(want, rel=0.03) and want < 0.95 * 48
    with pytest.raises(UsageError, match="min_snr_gamma"):
        recipe(min_snr_gamma=0.0)


def test_empirical_posterior_mean_is_bayes_for_a_two_image_training_set():
    """Two images a, b: E[x_0 | x_t] = a + (b − a)·sigmoid(Δ) with
    Δ = (‖x_t − αa‖² − ‖x_t − αb‖²)/2σ²; and, from far away (α → 0), the plain mean."""
    from scoretut.pipelines.images import empirical_posterior_mean

    g = torch.Generator().manual_seed(0)
    data = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    a, b = data
    alpha, std = 0.8, 0.6
    x_t = alpha * data[torch.tensor([0, 1, 1, 0])] + std * torch.randn(4, 3, 4, 4, generator=g, dtype=torch.float64)
    d = ((x_t - alpha * a).flatten(1).pow(2).sum(1) - (x_t - alpha * b).flatten(1).pow(2).sum(1)) / (2 * std**2)
    want = a + (b - a) * torch.sigmoid(d)[:, None, None, None]
    got = empirical_posterior_mean(x_t, alpha, std, data, chunk=3)
    assert torch.allclose(got, want, atol=1e-12)
    far = empirical_posterior_mean(x_t, 1e-9, 1.0, data)
    assert torch.allclose(far, data.mean(0).expand_as(far), atol=1e-9)


def test_labels_are_dropped_to_the_null_class_with_probability_p():
    sde = DiscreteVP.linear(T=10)
    seen = []

    def model(x, t, y):
        seen.append(y.clone())
        return torch.zeros_like(x)

    y = torch.randint(1, 4, (4000,), generator=torch.Generator().manual_seed(0))
    NoiseLoss(sde, p_drop=0.1)(model, (torch.zeros(4000, 1, 1, 1), y), torch.Generator().manual_seed(1))
    got = seen[-1]
    dropped = got == 0
    assert torch.equal(got[~dropped], y[~dropped])  # the others keep their label
    assert abs(float(dropped.float().mean()) - 0.1) < 4 * (0.1 * 0.9 / 4000) ** 0.5
    NoiseLoss(sde, p_drop=0.0)(model, (torch.zeros(50, 1, 1, 1), y[:50]), None)
    assert torch.equal(seen[-1], y[:50])


def test_guidance_combines_the_conditional_and_unconditional_noise():
    sde = DiscreteVP.linear()
    model = ExactEps(sde, [0.1, 0.3, -0.2])
    x, t, y = torch.randn(4, 3, 2, 2), torch.full((4,), 500.0), torch.tensor([1, 2, 1, 2])
    cond, uncond = model(x, t, y), model(x, t, torch.zeros_like(y))
    for w in (0.0, 2.5, 7.5):
        torch.testing.assert_close(guided_noise(model, y, w)(x, t), uncond + w * (cond - uncond))
    model.calls = 0
    torch.testing.assert_close(guided_noise(model, y, 1.0)(x, t), cond)
    assert model.calls == 1  # scale 1 needs no unconditional pass


@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddpm", 1000), ("ddpm", 25)])
def test_exact_noise_model_generates_its_constant_image(sampler, steps):
    """With ε* of a point mass, both samplers land on it; guidance w extrapolates to
    c_0 + w (c_y − c_0) (the point mass of the guided ε̂ = (x − √ᾱ(c_0 + w(c_y − c_0)))/std)."""
    r = recipe()
    model = ExactEps(make_sde(r), [0.1, 0.3, -0.2, 0.5])
    labels = torch.tensor([1, 2, 3, 1])
    for w, want in ((1.0, [0.3, -0.2, 0.5, 0.3]), (0.0, [0.1] * 4), (2.0, [0.5, -0.5, 0.9, 0.5])):
        x = generate(model, r, 4, labels=labels, sampler=sampler, steps=steps, cfg_scale=w, seed=3).x
        assert x.shape == (4, 3, 8, 8)
        torch.testing.assert_close(x, torch.tensor(want)[:, None, None, None].expand_as(x), atol=1e-4, rtol=0)


def test_generation_is_seeded_and_returns_trajectories():
    torch.manual_seed(0)
    r = recipe()
    net = build(r).eval()
    a, nfe, none = generate(net, r, 3, sampler="ddpm", steps=5, seed=1)
    b = generate(net, r, 3, sampler="ddpm", steps=5, seed=1).x
    c = generate(net, r, 3, sampler="ddpm", steps=5, seed=2).x
    assert nfe == 5 and none is None
    assert generate(net, r, 3, sampler="ddim", steps=4, cfg_scale=2.0).nfe == 8  # cond + uncond per step
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) <= 1.0
    traj = generate(net, r, 2, sampler="ddim", steps=10, trajectory_every=4).trajectory
    assert [t for t, _ in traj] == [1000.0, 600.0, 200.0, 0.0]
    assert all(x.shape == (2, 3, 8, 8) for _, x in traj)
    chunks = generate(net, r, 5, sampler="ddim", steps=4, batch_size=2).x
    assert chunks.shape == (5, 3, 8, 8)


def test_labels_for_sampling():
    r = recipe()
    assert label_tensor(r, None, 5).tolist() == [1, 2, 3, 1, 2]
    assert label_tensor(r, "c", 2).tolist() == [3, 3]
    assert label_tensor(r, 2, 3).tolist() == [2, 2, 2]
    with pytest.raises(UsageError, match="choose one of: a, b, c"):
        label_tensor(r, "cat", 2)
    with pytest.raises(UsageError, match="labels in 0..3"):
        label_tensor(r, [1, 4], 2)
    with pytest.raises(UsageError, match="without labels"):
        label_tensor(recipe(conditional=False), "a", 2)
    assert label_tensor(recipe(conditional=False), None, 2, cfg_scale=1.0) is None
    with pytest.raises(UsageError, match="guidance needs a model trained with labels"):
        label_tensor(recipe(conditional=False), None, 2, cfg_scale=2.0)
    with pytest.raises(UsageError, match="unknown schedule"):
        recipe(schedule="quadratic")
    with pytest.raises(UsageError, match="divisible by 2"):
        make_recipe(["a"], image_size=9, net=TINY)


def test_save_grid_places_image_i_at_row_i_div_n_column_i_mod_n(tmp_path):
    images = torch.linspace(-1, 1, 5)[:, None, None, None].expand(5, 3, 4, 6).contiguous()
    path = save_grid(images, tmp_path / "g.png", nrow=2, pad=1)
    grid = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    assert grid.shape == (3, 3 * 5 + 1, 2 * 7 + 1)
    for i in range(5):
        r, c = divmod(i, 2)
        block = grid[:, 1 + 5 * r : 5 * r + 5, 1 + 7 * c : 7 * c + 7]
        assert torch.equal(block, to_bytes(images[i]))
    assert int(grid[0, 0, 0]) == 255  # padding is white


def test_fit_writes_checkpoint_grids_and_loss_curve_and_resumes(tmp_path):
    root = write_proxy(tmp_path / "proxy", n_train=4, n_val=1, size=8, seed=0)
    opts = dict(image_size=8, net=TINY, batch_size=4, lr=1e-3, warmup=1, ema_decay=0.9, log_every=2, progress=False)
    res, r = fit(root, 4, out_dir=tmp_path / "run", sample_every=2, **opts)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["ckpt.pt", "loss.png", "samples_0000002.png", "samples_0000004.png"]
    assert r["classes"] == ["disc", "square", "triangle"] and r["net"]["num_classes"] == 3
    assert res.step == 4 and len(res.history) == 2
    half, _ = fit(root, 2, out_dir=tmp_path / "half", **opts)
    again, _ = fit(root, 4, out_dir=tmp_path / "half", resume=True, **opts)
    for k, v in res.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k
    with pytest.raises(UsageError, match="multiple of `log_every`"):
        fit(ImageFolder(root, "train", 8), 4, out_dir=tmp_path / "x", sample_every=3, **opts)
