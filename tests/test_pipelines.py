"""The pipelines share one shape: recipe → build → fit → checkpoint → load → generate.

VDM (:mod:`scoretut.pipelines.vdm2d`) and flow matching (:mod:`scoretut.pipelines.flow2d`) store
their recipe in the checkpoint, rebuild the trained model from it alone, and take their sampler
defaults from it; :func:`scoretut.pipelines.load` dispatches on the checkpoint's ``kind``.
"""

from __future__ import annotations

import json

import pytest
import torch

from scoretut import pipelines, schedules, vdm
from scoretut.checkpoint import load_checkpoint
from scoretut.data.toy2d import sample_dataset
from scoretut.errors import UsageError
from scoretut.flow import CosinePath
from scoretut.nets import ScoreMLP
from scoretut.pipelines import flow2d, toy2d, vdm2d
from scoretut.train import TrainConfig, train

SMALL = {"net": {"hidden": 8, "depth": 1, "emb_dim": 8}}
VDM_RECIPES = {
    "linear": vdm2d.recipe_with({**SMALL, "prediction": "v", "steps": 5}),
    "monotone": vdm2d.recipe_with({**SMALL, "schedule": "monotone", "n_features": 4, "steps": 5}),
}
FLOW_RECIPE = flow2d.recipe_with({**SMALL, "path": "cosine", "nfe": 4})
DATA = sample_dataset("swiss_roll", 512, seed=0)
TRAIN = {"batch_size": 64, "device": "cpu"}


def fit_to(pipeline, recipe, out_dir, steps=6):
    return pipeline.fit(DATA, steps, recipe=recipe, seed=1, out_dir=out_dir, **TRAIN)


def outputs(model, seed=0):
    """The model's outputs at fixed random points and times in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(64, 2, generator=g), torch.rand(64, generator=g) * 0.98 + 0.01
    with torch.no_grad():
        return model(x, t)


CASES = [(vdm2d, r) for r in VDM_RECIPES.values()] + [(flow2d, FLOW_RECIPE)]
IDS = [f"vdm-{k}" for k in VDM_RECIPES] + ["flow"]


@pytest.mark.parametrize("pipeline, recipe", CASES, ids=IDS)
def test_a_checkpoint_rebuilds_the_trained_model(tmp_path, pipeline, recipe):
    res = fit_to(pipeline, recipe, tmp_path)
    ckpt = tmp_path / "ckpt.pt"
    for ema, trained in ((True, res.ema), (False, res.model)):
        model, stored = pipeline.load(ckpt, ema=ema)
        assert stored == recipe
        assert torch.equal(outputs(model), outputs(trained))
        assert not torch.equal(outputs(model), outputs(pipeline.build(recipe)))  # training moved it
    # any pipeline's checkpoint through the one dispatcher
    loaded = pipelines.load(ckpt)
    assert loaded.pipeline is pipeline and loaded.recipe == recipe
    assert torch.equal(outputs(loaded.model), outputs(res.ema))
    a = pipeline.generate(res.ema, recipe, 50, seed=3).x
    assert torch.equal(loaded.pipeline.generate(loaded.model, loaded.recipe, 50, seed=3).x, a)


@pytest.mark.parametrize("pipeline, recipe", CASES, ids=IDS)
def test_the_recipe_is_stored_as_plain_json(tmp_path, pipeline, recipe):
    fit_to(pipeline, recipe, tmp_path, steps=1)
    config = load_checkpoint(tmp_path / "ckpt.pt")["config"]
    assert config == {"kind": pipeline.KIND, "recipe": recipe}
    assert json.loads(json.dumps(config["recipe"])) == recipe


def test_loading_a_checkpoint_of_another_kind_names_the_fix(tmp_path):
    fit_to(flow2d, FLOW_RECIPE, tmp_path / "flow", steps=1)
    fit_to(vdm2d, VDM_RECIPES["linear"], tmp_path / "vdm", steps=1)
    flow_ckpt, vdm_ckpt = tmp_path / "flow" / "ckpt.pt", tmp_path / "vdm" / "ckpt.pt"
    with pytest.raises(UsageError, match=r"not a 'vdm2d.fit' checkpoint \(it holds a 'flow' one.*pass one written by it"):
        vdm2d.load(flow_ckpt)
    with pytest.raises(UsageError, match=r"not a 'flow2d.fit' checkpoint \(it holds a 'vdm' one"):
        flow2d.load(vdm_ckpt)
    with pytest.raises(UsageError, match="not a 'scoretut toy train' checkpoint"):
        toy2d.load(vdm_ckpt)
    # a plain train() checkpoint has no kind: only the dispatcher can say so
    torch.manual_seed(0)
    train(flow2d.build(FLOW_RECIPE), lambda m, x, generator=None: m(x, x[:, 0]).pow(2).mean(), DATA,
          TrainConfig(steps=1, batch_size=8), out_dir=tmp_path / "plain")  # fmt: skip
    with pytest.raises(UsageError, match="no pipeline kind"):
        pipelines.load(tmp_path / "plain" / "ckpt.pt")
    with pytest.raises(UsageError, match=r"not a 'vdm2d.fit' checkpoint; pass"):
        vdm2d.load(tmp_path / "plain" / "ckpt.pt")


def test_generate_takes_its_defaults_from_the_recipe():
    torch.manual_seed(0)
    recipe = vdm2d.recipe_with({**SMALL, "sampler": "ode_heun", "steps": 4})
    model = vdm2d.build(recipe)
    out = vdm2d.generate(model, recipe, 30, seed=2)
    same = vdm2d.generate(model, recipe, 30, seed=2, sampler="ode_heun", steps=4)
    assert torch.equal(out.x, same.x) and out.nfe == same.nfe == 7  # Heun: 2·4 − 1
    assert vdm2d.generate(model, vdm2d.recipe_with({"steps": 3}, recipe), 30, seed=2).nfe == 5
    assert vdm2d.generate(model, recipe, 30, seed=2, sampler="em").nfe == 4

    torch.manual_seed(0)
    model = flow2d.build(FLOW_RECIPE)
    torch.nn.init.normal_(model.out[-1].weight, std=0.3)  # a non-zero field
    out = flow2d.generate(model, FLOW_RECIPE, 30, seed=2, trajectory_every=1)
    same = flow2d.generate(model, FLOW_RECIPE, 30, seed=2, solver="heun", nfe=4, trajectory_every=1)
    assert torch.equal(out.x, same.x) and out.nfe == same.nfe == 4 and len(out.trajectory) == 3
    euler = flow2d.generate(model, flow2d.recipe_with({"solver": "euler"}, FLOW_RECIPE), 30, seed=2)
    assert euler.nfe == 4 and not torch.equal(euler.x, out.x)


def test_build_follows_the_recipe():
    torch.manual_seed(0)
    model = vdm2d.build(vdm2d.recipe_with({"schedule": "monotone", "n_features": 4, "gamma_min": -6.0,
                                           "gamma_max": 3.0, "prediction": "x0"}))  # fmt: skip
    assert isinstance(model.schedule, schedules.MonotoneSchedule) and model.schedule.n_features == 4
    torch.testing.assert_close(model.schedule(torch.tensor([0.0, 1.0])), torch.tensor([-6.0, 3.0]))
    assert model.prediction == "x0" and model.net.out[-1].out_features == 2
    assert isinstance(flow2d.make_loss(FLOW_RECIPE).path, CosinePath)
    with pytest.raises(UsageError, match="unknown schedule 'cosine'"):
        vdm2d.build(vdm2d.recipe_with({"schedule": "cosine"}))
    with pytest.raises(UsageError, match="unknown path"):
        flow2d.make_loss(flow2d.recipe_with({"path": "sine"}))


def test_vdm_fit_trains_what_the_chapter_built_by_hand():
    """``vdm2d.fit`` = seed, schedule then network, and ``train`` with :data:`vdm2d.TRAINING`."""
    recipe = VDM_RECIPES["monotone"]
    res = vdm2d.fit(DATA, 4, recipe=recipe, seed=1, log_every=2, **TRAIN)
    torch.manual_seed(1)
    sched = schedules.MonotoneSchedule(n_features=4)
    model = vdm.VDM(ScoreMLP(dim=2, hidden=8, depth=1, emb_dim=8), sched, prediction="eps")
    cfg = TrainConfig(steps=4, seed=1, batch_size=64, lr=2e-3, warmup=50, ema_decay=0.99, log_every=2)
    hand = train(model, vdm.VDMLoss(), DATA, cfg, device="cpu")
    assert res.history == hand.history
    for a, b in zip(res.ema.state_dict().values(), hand.ema.state_dict().values()):
        assert torch.equal(a, b)
