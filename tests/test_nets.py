"""Conditioning embeddings and the residual score MLP."""

from __future__ import annotations

import math

import pytest
import torch

from scoretut.nets import GaussianFourierEmbedding, ScoreMLP, SinusoidalEmbedding
from scoretut.parametrisation import EDMPrecond


@pytest.mark.parametrize("cls", [SinusoidalEmbedding, GaussianFourierEmbedding])
@pytest.mark.parametrize("dim", [2, 7, 64])
def test_embedding_shapes_and_values_bounded(cls, dim):
    torch.manual_seed(0)
    emb = cls(dim)
    t = torch.linspace(-2, 3, 11)
    out = emb(t)
    assert out.shape == (11, dim)
    assert torch.isfinite(out).all() and out.abs().max() <= 1 + 1e-6
    # features come in (cos, sin) pairs of the same frequency: each pair has unit norm
    half = dim // 2
    assert torch.allclose(out[:, :half] ** 2 + out[:, half : 2 * half] ** 2, torch.ones(11, half), atol=1e-5)
    if dim % 2:
        assert torch.all(out[:, -1] == 0)


def test_sinusoidal_matches_transformer_formula():
    dim, max_period = 8, 10000.0
    t = torch.tensor([0.0, 1.0, 5.0, 123.0])
    out = SinusoidalEmbedding(dim, max_period)(t)
    for k in range(dim // 2):
        w = max_period ** (-k / (dim // 2))
        assert torch.allclose(out[:, k], torch.cos(w * t), atol=1e-5)
        assert torch.allclose(out[:, dim // 2 + k], torch.sin(w * t), atol=1e-5)
    assert torch.equal(out[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    assert "freqs" not in SinusoidalEmbedding(dim).state_dict()  # a function of the arguments


def test_fourier_frequencies_are_fixed_saved_and_scaled():
    torch.manual_seed(0)
    emb = GaussianFourierEmbedding(4096, scale=16.0)
    assert list(emb.parameters()) == []  # not trained
    assert "W" in emb.state_dict()  # but restored by a checkpoint
    assert emb.W.std().item() == pytest.approx(16.0, rel=0.05)
    t = torch.tensor([0.3])
    w = emb.W[:3]
    assert torch.allclose(emb(t)[0, :3], torch.sin(2 * math.pi * 0.3 * w), atol=1e-4)


def test_distinct_conditionings_give_distinct_embeddings():
    t = torch.linspace(0, 1, 50)
    for emb in (SinusoidalEmbedding(32), GaussianFourierEmbedding(32)):
        e = emb(t * 1000 if isinstance(emb, SinusoidalEmbedding) else t)
        d = torch.cdist(e, e) + torch.eye(50)
        assert d.min() > 1e-3


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
@pytest.mark.parametrize("norm", [True, False])
def test_score_mlp_shape_and_zero_init(embedding, norm):
    torch.manual_seed(0)
    net = ScoreMLP(dim=3, hidden=32, depth=2, emb_dim=16, embedding=embedding, norm=norm)
    x, t = torch.randn(10, 3), torch.rand(10)
    out = net(x, t)
    assert out.shape == (10, 3)
    assert torch.equal(out, torch.zeros(10, 3))  # zero-initialised output layer
    assert net(x, torch.tensor(0.5)).shape == (10, 3)  # a scalar conditioning broadcasts


def test_score_mlp_every_parameter_learns():
    torch.manual_seed(0)
    net = ScoreMLP(hidden=32, depth=2, emb_dim=16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, t = torch.randn(64, 2), torch.rand(64)
    target = torch.sin(3 * x) * t[:, None]
    before = [p.detach().clone() for p in net.parameters()]
    for _ in range(3):
        opt.zero_grad()
        (net(x, t) - target).pow(2).mean().backward()
        opt.step()
    for (name, p), p0 in zip(net.named_parameters(), before):
        assert not torch.equal(p, p0), f"{name} never changed"


def test_score_mlp_depends_on_conditioning_and_not_on_other_samples():
    torch.manual_seed(0)
    net = ScoreMLP(hidden=32, depth=2, emb_dim=16)
    for p in net.out.parameters():  # leave the zero init so outputs are non-trivial
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(8, 2)
    t = torch.rand(8)
    out = net(x, t)
    assert not torch.allclose(out, net(x, t + 0.5))
    # samples are processed independently (what the sliced-score-matching loss relies on)
    singles = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(8)])
    assert torch.allclose(out, singles, atol=1e-6)


def test_config_round_trip_rebuilds_the_same_architecture():
    torch.manual_seed(0)
    net = ScoreMLP(dim=2, hidden=24, depth=2, emb_dim=12, embedding="fourier", act="gelu", norm=False, cond_scale=3.0)
    cfg = net.config()
    assert all(isinstance(v, (str, int, float, bool)) for v in cfg.values())
    clone = ScoreMLP.from_config(cfg)
    clone.load_state_dict(net.state_dict())  # includes the Fourier frequencies
    for p in net.out.parameters():
        torch.nn.init.normal_(p)
    clone.load_state_dict(net.state_dict())
    x, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(net(x, t), clone(x, t))


def test_bad_names_are_rejected():
    with pytest.raises(ValueError, match="embedding"):
        ScoreMLP(embedding="nope")
    with pytest.raises(ValueError, match="activation"):
        ScoreMLP(act="nope")


def test_score_mlp_under_edm_preconditioning():
    torch.manual_seed(0)
    D = EDMPrecond(ScoreMLP(hidden=32, depth=1, emb_dim=16), sigma_data=0.5)
    x, sigma = torch.randn(6, 2), torch.rand(6) + 0.1
    out = D(x, sigma)
    assert out.shape == (6, 2)
    # untrained F = 0, so D = c_skip x
    assert torch.allclose(out, 0.25 / (sigma[:, None] ** 2 + 0.25) * x)
