"""The training loop, its EMA and its checkpoints."""

from __future__ import annotations

import copy
import os
import pickle

import pytest
import torch
from torch import nn

from scoretut import checkpoint as ckpt_mod
from scoretut.checkpoint import load_checkpoint, save_checkpoint
from scoretut.errors import UsageError
from scoretut.losses import DSMLoss
from scoretut.nets import ScoreMLP
from scoretut.sde import VPSDE
from scoretut.train import TensorBatches, TrainConfig, checkpoint_path, train

MEAN = torch.tensor([1.0, -1.0])
CHOL = torch.tensor([[1.0, 0.0], [0.5, 0.5]])


def gaussian_points(n: int, seed: int = 0) -> torch.Tensor:
    return MEAN + torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) @ CHOL.T


DATA = gaussian_points(2000)
LOSS = DSMLoss(VPSDE())


def tiny_net(seed: int = 0) -> ScoreMLP:
    torch.manual_seed(seed)
    return ScoreMLP(hidden=16, depth=1, emb_dim=8)


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(steps=40, batch_size=64, lr=3e-3, warmup=5, ema_decay=0.9, log_every=10, progress=False)
    return TrainConfig(**{**base, **kw})


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def differ(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# -- the loop -----------------------------------------------------------------------------------
def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    config = {"net": tiny_net().config()}
    full = train(tiny_net(), LOSS, DATA, tiny_cfg(steps=300, log_every=50), config=config)

    first = train(tiny_net(), LOSS, DATA, tiny_cfg(steps=150, log_every=50), out_dir=tmp_path, config=config)
    assert first.step == 150
    torch.manual_seed(12345)  # resumption restores the global RNG; disturb it to prove it
    # a differently initialised network: every weight must come from the checkpoint
    rest = train(tiny_net(seed=7), LOSS, DATA, tiny_cfg(steps=300, log_every=50),
                 out_dir=tmp_path, resume=True, config=config)  # fmt: skip
    assert rest.step == 300
    assert_same_weights(rest.model, full.model)
    assert_same_weights(rest.ema, full.ema)
    assert rest.history == full.history
    assert [s for s, _ in rest.history] == [50, 100, 150, 200, 250, 300]
    assert load_checkpoint(checkpoint_path(tmp_path))["step"] == 300


def test_resume_from_a_periodic_checkpoint_mid_window(tmp_path):
    """A checkpoint written by ``ckpt_every`` between log points resumes exactly too."""
    full = train(tiny_net(), LOSS, DATA, tiny_cfg(steps=60))
    part = train(tiny_net(), LOSS, DATA, tiny_cfg(steps=35, ckpt_every=7), out_dir=tmp_path)
    assert part.step == 35
    rest = train(tiny_net(), LOSS, DATA, tiny_cfg(steps=60), out_dir=tmp_path, resume=True)
    assert_same_weights(rest.model, full.model)
    assert_same_weights(rest.ema, full.ema)
    assert [s for s, _ in rest.history] == [10, 20, 30, 40, 50, 60]
    # unlogged losses travel in the checkpoint, so even the window across the restart is exact
    assert rest.history == full.history


def test_same_seed_same_weights_different_seed_different_weights():
    a = train(tiny_net(), LOSS, DATA, tiny_cfg(seed=3))
    b = train(tiny_net(), LOSS, DATA, tiny_cfg(seed=3))
    c = train(tiny_net(), LOSS, DATA, tiny_cfg(seed=4))  # same init, other batches and noise
    assert_same_weights(a.model, b.model)
    assert_same_weights(a.ema, b.ema)
    assert differ(a.model, c.model) and differ(a.ema, c.ema)


def test_ema_is_an_exponential_moving_average(tmp_path):
    """``θ̄_0 = θ_0`` (AveragedModel's first-update copy is spent on the initial weights), then
    ``θ̄_k = d θ̄_{k-1} + (1 − d) θ_k`` at every step, with no decay warm-up."""
    d = 0.9
    net = tiny_net()
    theta0 = copy.deepcopy(net.state_dict())
    one = train(net, LOSS, DATA, tiny_cfg(steps=1, ema_decay=d, warmup=0), out_dir=tmp_path)
    for k, ema in one.ema.state_dict().items():
        assert torch.allclose(ema, d * theta0[k] + (1 - d) * one.model.state_dict()[k], atol=1e-7), k
    # a later step: from the state saved after 5 steps to 6
    five = train(tiny_net(), LOSS, DATA, tiny_cfg(steps=5, ema_decay=d), out_dir=tmp_path, overwrite=True)
    ema5 = copy.deepcopy(five.ema.state_dict())
    six = train(tiny_net(), LOSS, DATA, tiny_cfg(steps=6, ema_decay=d), out_dir=tmp_path, resume=True)
    for k, ema in six.ema.state_dict().items():
        assert torch.allclose(ema, d * ema5[k] + (1 - d) * six.model.state_dict()[k], atol=1e-7), k
    assert differ(six.ema, six.model)


def test_training_a_score_mlp_with_dsm_approaches_the_exact_score():
    sde, loss = VPSDE(), DSMLoss(VPSDE())
    torch.manual_seed(0)
    net = ScoreMLP(hidden=64, depth=2, emb_dim=32)
    data = gaussian_points(20_000, seed=1)
    eval_x0 = gaussian_points(8192, seed=2)
    cov = CHOL @ CHOL.T

    def exact_score(x, t):  # p_t = N(s m, s² C + std² I)
        s, var = sde.scale(t), sde.std(t) ** 2
        sigma_t = s[:, None, None] ** 2 * cov + var[:, None, None] * torch.eye(2)
        return -torch.linalg.solve(sigma_t, (x - s[:, None] * MEAN).unsqueeze(-1)).squeeze(-1)

    def eval_loss(fn):
        with torch.no_grad():
            return loss(fn, eval_x0, generator=torch.Generator().manual_seed(0)).item()

    before, best = eval_loss(net), eval_loss(exact_score)
    result = train(net, loss, data, TrainConfig(steps=300, batch_size=512, lr=3e-3, warmup=20,
                                                ema_decay=0.95, log_every=50, progress=False))  # fmt: skip
    after = eval_loss(result.ema)
    assert result.history[-1][1] < 0.5 * result.history[0][1]
    assert after < 0.5 * before
    assert after < 1.1 * best, (before, after, best)  # close to the irreducible DSM loss


def test_tensor_sampler_is_deterministic_and_resumable():
    a, b = TensorBatches(DATA, seed=1), TensorBatches(DATA, seed=1)
    assert torch.equal(a.sample(8), b.sample(8))
    state = a.state_dict()
    x = a.sample(8)
    b.load_state_dict(state)
    assert torch.equal(b.sample(8), x)
    assert not torch.equal(TensorBatches(DATA, seed=2).sample(8), TensorBatches(DATA, seed=1).sample(8))


def test_train_accepts_an_iterator_of_batches():
    batches = (gaussian_points(32, seed=k) for k in range(10**6))
    result = train(tiny_net(), LOSS, batches, tiny_cfg(steps=10))
    assert result.step == 10 and len(result.history) == 1


def test_train_refuses_to_clobber_or_to_resume_nothing(tmp_path):
    with pytest.raises(UsageError, match="does not exist; drop `resume`"):
        train(tiny_net(), LOSS, DATA, tiny_cfg(steps=2), out_dir=tmp_path, resume=True)
    with pytest.raises(UsageError, match="`resume` needs `out_dir`"):
        train(tiny_net(), LOSS, DATA, tiny_cfg(steps=2), resume=True)
    train(tiny_net(), LOSS, DATA, tiny_cfg(steps=2), out_dir=tmp_path, config={"a": 1})
    with pytest.raises(UsageError, match="already exists; pass `resume`"):
        train(tiny_net(), LOSS, DATA, tiny_cfg(steps=2), out_dir=tmp_path, config={"a": 1})
    with pytest.raises(UsageError, match="different configuration"):
        train(tiny_net(), LOSS, DATA, tiny_cfg(steps=4), out_dir=tmp_path, resume=True, config={"a": 2})
    with pytest.raises(UsageError, match="different network"):
        train(ScoreMLP(hidden=8, depth=1, emb_dim=8), LOSS, DATA, tiny_cfg(steps=4), out_dir=tmp_path,
              resume=True, config={"a": 1})  # fmt: skip
    with pytest.warns(UserWarning, match="changed settings"):
        train(tiny_net(), LOSS, DATA, tiny_cfg(steps=4, lr=1e-2), out_dir=tmp_path, resume=True, config={"a": 1})


def test_bad_train_settings_are_usage_errors():
    with pytest.raises(UsageError, match="`lr`"):
        TrainConfig(lr=0)
    with pytest.raises(UsageError, match="`ema_decay`"):
        TrainConfig(ema_decay=1.5)
    with pytest.raises(UsageError, match="shape"):
        TensorBatches(torch.zeros(0, 2))


def test_diverging_loss_is_reported():
    def nan_loss(model, x0, generator=None):
        return model(x0, torch.zeros(len(x0))).sum() * float("nan")

    with pytest.raises(UsageError, match="lower `lr`"):
        train(tiny_net(), nan_loss, DATA, tiny_cfg(steps=10))


# -- checkpoints --------------------------------------------------------------------------------
def test_checkpoint_round_trip_is_atomic_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "deep" / "dir" / "ck.pt"
    state = {"w": torch.arange(5.0), "cfg": {"a": 1, "b": [1.5, "x", True, None]}, "t": (1, 2)}
    save_checkpoint(path, state)
    assert os.listdir(path.parent) == ["ck.pt"]
    back = load_checkpoint(path)
    assert torch.equal(back["w"], state["w"]) and back["cfg"] == state["cfg"] and back["t"] == (1, 2)


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"version": 1})

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(ckpt_mod.torch, "save", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(path, {"version": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"version": 1}
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_unwritable_directory_is_a_usage_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(UsageError, match=r"cannot write to .*a_file.*choose another `out_dir`"):
        save_checkpoint(blocker / "run" / "ck.pt", {"x": 1})
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="choose another `out_dir`"):
            save_checkpoint(locked / "ck.pt", {"x": 1})


def test_saving_objects_is_refused():
    with pytest.raises(TypeError, match=r"state\['cfg'\]\['obj'\].*plain data"):
        save_checkpoint("unused.pt", {"cfg": {"obj": object()}})


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UsageError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UsageError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "text"])
def test_corrupt_checkpoint(tmp_path, damage):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.randn(100)})
    good = path.read_bytes()
    path.write_bytes({
        "truncate": good[: len(good) // 2],
        "garbage": bytes(range(256)) * 4,
        "empty": b"",
        "text": b"hello, I am not a checkpoint",
    }[damage])  # fmt: skip
    with pytest.raises(UsageError, match="is not a readable checkpoint"):
        load_checkpoint(path)


class Custom:
    """Stands for any class a careless script might pickle into a checkpoint."""


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "ck.pt"
    torch.save({"obj": Custom()}, path)  # plain torch.save, bypassing our checks
    with pytest.raises(UsageError, match="will not unpickle.*state_dict"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps([1, 2], protocol=4))  # a plain pickle, not a torch zip file
    with pytest.raises(UsageError, match="will not unpickle.*state_dict"):
        load_checkpoint(path)
    path.write_bytes(bytes(range(7, 250)))  # neither: corrupt
    with pytest.raises(UsageError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_training_checkpoint_contents(tmp_path):
    config = {"net": tiny_net().config(), "sde": "vp"}
    train(tiny_net(), LOSS, DATA, tiny_cfg(steps=20), out_dir=tmp_path, config=config)
    state = load_checkpoint(checkpoint_path(tmp_path))
    assert {"model", "ema", "ema_n_averaged", "optimizer", "step", "rng", "data", "history",
            "train_config", "config"} <= state.keys()  # fmt: skip
    assert state["step"] == 20 and state["ema_n_averaged"] == 21  # the initial copy + 20 steps
    assert state["config"] == config and state["train_config"]["steps"] == 20
    rebuilt = ScoreMLP.from_config({k: v for k, v in state["config"]["net"].items() if k != "name"})
    rebuilt.load_state_dict(state["ema"])  # the EMA weights load into a plain network


def test_learning_rate_warms_up_then_follows_the_cosine_to_its_floor():
    cfg = TrainConfig(lr=1e-2, warmup=10, decay_steps=110, lr_floor=0.1)
    assert [cfg.lr_at(k) for k in (0, 4, 9)] == pytest.approx([1e-3, 5e-3, 1e-2])
    assert cfg.lr_at(60) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))  # halfway: cos(π/2) = 0
    assert cfg.lr_at(110) == pytest.approx(1e-3) and cfg.lr_at(10_000) == pytest.approx(1e-3)
    lrs = [cfg.lr_at(k) for k in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay after the warm-up
    assert TrainConfig(lr=1e-2, warmup=10).lr_at(10_000) == 1e-2  # no decay without decay_steps
    with pytest.raises(UsageError, match="warm-up"):
        TrainConfig(warmup=100, decay_steps=50)
