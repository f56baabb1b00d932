"""The training loop in a process group (DDP on the CPU with gloo, 2 processes) and its speed options."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from scoretut import distributed
from scoretut.errors import UsageError
from scoretut.losses import DSMLoss
from scoretut.nets import ScoreMLP
from scoretut.sde import VPSDE
from scoretut.train import TrainConfig, train

WORLD = 2
X = torch.linspace(-1, 1, 16)[:, None] * torch.tensor([[1.0, -2.0, 0.5]])  # (16, 3)
Y = X @ torch.tensor([[0.3], [-0.7], [1.1]]) + 0.2 + 0.1 * torch.sin(7 * X[:, :1])  # (16, 1)


class FixedBatches:
    """Always the same batch: rows ``rank::world`` of (X, Y) — the whole set for one process."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.x, self.y = X[rank::world], Y[rank::world]

    def sample(self, batch_size: int):
        assert batch_size == len(self.x)
        return self.x, self.y

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def mse(model, batch, generator=None):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def regression_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=5, batch_size=16, lr=0.05, warmup=1, log_every=1, progress=False), **kw})


def dsm_cfg(steps: int, **kw) -> TrainConfig:
    base = dict(steps=steps, batch_size=32, lr=3e-3, warmup=2, log_every=3, ckpt_every=3, progress=False)
    return TrainConfig(**{**base, **kw})


def tiny_mlp() -> ScoreMLP:
    torch.manual_seed(1)
    return ScoreMLP(hidden=16, depth=1, emb_dim=8)


DATA = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD))  # fmt: skip
    torch.set_num_threads(1)
    world = distributed.setup("cpu")
    assert (world.rank, world.size) == distributed.world() == (rank, WORLD)
    tmp_path = Path(tmp)
    out: dict = {}
    try:
        # 1. data parallel = the same steps on the union of the shards
        res = train(linear(), mse, FixedBatches(rank, WORLD), regression_cfg(), device="cpu")
        out["regression"] = {k: v.clone() for k, v in res.model.state_dict().items()}
        out["regression_history"] = res.history
        # 2. periodic checkpoints, written by rank 0 only, and an exact resume
        calls = []
        full = train(tiny_mlp(), DSMLoss(VPSDE()), DATA, dsm_cfg(12), out_dir=tmp_path / "full", device="cpu",
                     callback=lambda r: calls.append(r.step))  # fmt: skip
        out["full"] = full.model.state_dict()
        out["history"] = full.history
        out["calls"] = calls
        train(tiny_mlp(), DSMLoss(VPSDE()), DATA, dsm_cfg(6), out_dir=tmp_path / "part", device="cpu")
        resumed = train(tiny_mlp(), DSMLoss(VPSDE()), DATA, dsm_cfg(12), out_dir=tmp_path / "part",
                        resume=True, device="cpu")  # fmt: skip
        out["resumed"] = resumed.model.state_dict()
        out["resumed_history"] = resumed.history
        try:
            train(tiny_mlp(), DSMLoss(VPSDE()), DATA, dsm_cfg(3, batch_size=33), device="cpu")
        except UsageError as e:
            out["odd_batch"] = str(e)
    finally:
        distributed.teardown()
    torch.save(out, tmp_path / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(tmp)), nprocs=WORLD, join=True)
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_process_on_the_whole_batch(ddp_results):
    _, ranks = ddp_results
    single = train(linear(), mse, FixedBatches(), regression_cfg(), device="cpu")
    for r in ranks:
        for k, v in single.model.state_dict().items():
            torch.testing.assert_close(r["regression"][k], v, rtol=1e-5, atol=1e-6)
    # the logged loss is the mean over processes, i.e. the loss on the whole batch
    for (s0, l0), (s1, l1), (s, l) in zip(ranks[0]["regression_history"], ranks[1]["regression_history"], single.history):
        assert s0 == s1 == s and l0 == pytest.approx(l, rel=1e-5) and l1 == pytest.approx(l, rel=1e-5)


@pytest.mark.slow
def test_ranks_stay_identical_and_only_rank_zero_reports(ddp_results):
    tmp, ranks = ddp_results
    for k in ranks[0]["full"]:
        assert torch.equal(ranks[0]["full"][k], ranks[1]["full"][k]), k
    assert ranks[0]["calls"] == [3, 6, 9, 12] and ranks[1]["calls"] == []
    assert ranks[0]["history"] == ranks[1]["history"]
    assert "not divisible by the 2 processes" in ranks[0]["odd_batch"]


@pytest.mark.slow
def test_checkpoint_holds_every_rank_and_resumes_exactly(ddp_results):
    tmp, ranks = ddp_results
    state = torch.load(tmp / "full" / "ckpt.pt", weights_only=True)
    assert len(state["ranks"]) == WORLD
    noise = [r["rng"]["noise"] for r in state["ranks"]]
    assert not torch.equal(noise[0], noise[1])  # each rank draws its own times and noise
    data = [r["data"]["generator"] for r in state["ranks"]]
    assert not torch.equal(data[0], data[1])  # ... and its own minibatches
    for k in ranks[0]["full"]:
        assert torch.equal(ranks[0]["full"][k], ranks[0]["resumed"][k]), k
    assert ranks[0]["resumed_history"] == ranks[0]["history"]


# -- speed options on the CPU ----------------------------------------------------------------
class Conv(nn.Module):
    """A tiny conditional conv net (x, t, y) -> x-shaped, to exercise 4-D batches with labels."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.emb = nn.Embedding(3, 3)

    def forward(self, x, t, y):
        return self.conv(x) * t[:, None, None, None] + self.emb(y)[:, :, None, None]


def image_loss(model, batch, generator=None):
    x, y = batch
    t = torch.rand(x.shape[0], generator=generator, device=x.device)
    return ((model(x, t, y) - x) ** 2).mean()


IMAGES = (torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3)


class ImagePairs:
    def __init__(self):
        self.g = torch.Generator().manual_seed(0)

    def sample(self, n):
        i = torch.randint(64, (n,), generator=self.g)
        return IMAGES[0][i], IMAGES[1][i]

    def state_dict(self):
        return {"g": self.g.get_state()}

    def load_state_dict(self, s):
        self.g.set_state(s["g"])


def conv_run(**opts):
    torch.manual_seed(0)
    cfg = TrainConfig(steps=20, batch_size=8, lr=1e-2, warmup=1, log_every=5, progress=False, **opts)
    return train(Conv(), image_loss, ImagePairs(), cfg, device="cpu")


def test_channels_last_and_fused_adamw_follow_the_plain_run():
    ref = conv_run()
    for opts in (dict(channels_last=True), dict(fused=True)):
        res = conv_run(**opts)
        for (_, a), (_, b) in zip(ref.history, res.history):
            assert a == pytest.approx(b, rel=1e-4)
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(res.model.state_dict()[k].contiguous(), v, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_trains_to_nearly_the_same_loss():
    ref, amp = conv_run(), conv_run(amp="bf16")
    assert ref.history[-1][1] < 0.8 * ref.history[0][1]  # the plain run learns
    # bfloat16 keeps 8 bits of mantissa: the losses agree to a few per cent, not exactly
    for (_, a), (_, b) in zip(ref.history, amp.history):
        assert b == pytest.approx(a, rel=0.05)
    assert all(p.dtype == torch.float32 for p in amp.model.parameters())
    with pytest.raises(UsageError, match="unknown `amp`"):
        TrainConfig(amp="fp8")


@pytest.mark.slow
def test_torch_compile_runs_on_the_cpu():
    ref, comp = conv_run(), conv_run(compile=True)
    for (_, a), (_, b) in zip(ref.history, comp.history):
        assert b == pytest.approx(a, rel=1e-3)
