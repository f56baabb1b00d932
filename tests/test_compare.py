"""The sampler comparison: NFE accounting, shared starting draws, and quality on exact Gaussian scores."""

import pytest
import torch

from gaussian import exact_score, w2_to_data
from scoretut.sampler_comparison import SPECS, SamplerSpec, best_within, compare, make_grid, reference, table
from scoretut.errors import UsageError
from scoretut.sampling import CountingScore, sample, timesteps
from scoretut.schedules import DiscreteVP, ddpm_timesteps
from scoretut.sde import EDMSDE, VPSDE

SPECS_ALL = (*SPECS, SamplerSpec("PC, 2 corrector steps", "pc", {"n_corrector": 2}),
             SamplerSpec("EDM Euler", "edm", {"solver": "euler"}))  # fmt: skip


def counted_nfe(spec, sde, steps, grid="karras"):
    score = CountingScore(exact_score(sde))
    x = torch.zeros(3, 2, dtype=torch.float64)
    sample(spec.sampler, sde, score, x, make_grid(sde, steps, grid), generator=torch.Generator().manual_seed(0),
           **spec.options)  # fmt: skip
    return score.nfe


@pytest.mark.parametrize("sde", [EDMSDE(sigma_max=10.0), VPSDE()], ids=["edm-grid-ends-at-0", "vp-grid-ends-at-eps"])
@pytest.mark.parametrize("spec", SPECS_ALL, ids=lambda s: s.label)
def test_steps_is_the_largest_count_within_the_budget(spec, sde):
    for budget in (5, 9, 19):
        steps = spec.steps(sde, budget)
        assert counted_nfe(spec, sde, steps) <= budget < counted_nfe(spec, sde, steps + 1), (spec, budget)


def test_compare_runs_every_spec_from_one_draw_with_a_custom_metric():
    sde = EDMSDE(sigma_max=40.0)
    x = sde.prior_sampling((20_000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []

    def evaluate(y):
        seen.append(y)
        return {"w2": w2_to_data(y)}

    specs = [SamplerSpec("PF-ODE Heun", "ode_heun"), SamplerSpec("EDM Heun", "edm")]
    rows = compare(sde, exact_score(sde), (5, 35, 99), specs=specs, x=x, evaluate=evaluate)
    assert [(r["label"], r["nfe"]) for r in rows] == [(s.label, nfe) for s in specs for nfe in (5, 35, 99)]
    # Without churn the EDM sampler on the EDM SDE is Heun on the ODE: same start, same samples.
    for a, b in zip(seen[:3], seen[3:]):
        assert torch.allclose(a, b, atol=1e-10)
    # With the exact score the error is the solver's: it falls with NFE, to a few hundredths.
    w2 = [r["w2"] for r in rows[:3]]
    assert w2[0] > w2[1] > w2[2] and w2[2] <= 0.05, w2
    ref = reference(sde, exact_score(sde), steps=1000, x=x, evaluate=evaluate)
    assert ref["nfe"] == 1000 and ref["w2"] <= 0.02
    factor = rows[2]["w2"] / ref["w2"] * 1.001  # just wide enough for the 99-NFE row
    assert best_within(rows, ref, factor, metrics=("w2",))["nfe"] == 99


def test_compare_on_the_discrete_ddpm_grid():
    sde = DiscreteVP.linear()
    x = sde.prior_sampling((20_000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = ddpm_timesteps
    rows = compare(sde, exact_score(sde), (20, 50, 200), specs=[SamplerSpec("DDIM", "ddim")], x=x, grid=grid,
                   evaluate=lambda y: {"w2": w2_to_data(y)})  # fmt: skip
    assert [r["steps"] for r in rows] == [20, 50, 200]
    w2 = [r["w2"] for r in rows]
    assert w2[0] > w2[1] > w2[2] and w2[2] <= 0.02, w2


def test_best_within_and_table():
    ref = {"label": "ref", "steps": 1000, "nfe": 1000, "cd": 1.0, "emd": 1.0}
    rows = [{"label": "a", "steps": 5, "nfe": 5, "cd": 1.5, "emd": 1.0},
            {"label": "b", "steps": 9, "nfe": 9, "cd": 1.05, "emd": 1.08},
            {"label": "c", "steps": 19, "nfe": 19, "cd": 1.0, "emd": 1.0}]  # fmt: skip
    assert best_within(rows, ref, 1.1)["label"] == "b"
    assert best_within(rows, ref, 1.01)["label"] == "c"
    assert best_within(rows[:1], ref, 1.1) is None
    lines = table(rows, ref).splitlines()
    assert len(lines) == 2 + 1 + len(rows) and "CD / ref" in lines[0] and "| b | 9 | 9 | 1.0500 | 1.0800 | 1.050 | 1.080 |" in lines


def test_compare_needs_a_draw_or_a_size():
    with pytest.raises(UsageError, match="multiple of 100"):
        compare(VPSDE(), exact_score(VPSDE()), (5,), n=150, data="swiss_roll")
    with pytest.raises(UsageError, match="prior draw"):
        compare(VPSDE(), exact_score(VPSDE()), (5,), data="swiss_roll")
    assert torch.equal(make_grid(VPSDE(), 4, "uniform"), timesteps(VPSDE(), 4, "uniform"))
