"""One device rule: SCORETUT_DEVICE (auto|cpu|cuda|cuda:N) for chapters and library entry points."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import scoretut
from scoretut import sampler_comparison, schedules, vdm
from scoretut.pipelines import images, toy2d, vdm2d
from scoretut.cli import build_parser
from scoretut.errors import UsageError
from scoretut.runtime import default_device, resolve_device
from scoretut.nets import ScoreMLP
from scoretut.sampling import euler_maruyama, sample, timesteps
from scoretut.sde import VPSDE
from scoretut.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_device_resolves_from_the_environment(monkeypatch):
    monkeypatch.setenv("SCORETUT_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv("SCORETUT_DEVICE", " CPU ")
    assert default_device() == torch.device("cpu")
    monkeypatch.delenv("SCORETUT_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")  # auto without CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")  # auto with CUDA
    monkeypatch.setenv("SCORETUT_DEVICE", "auto")
    assert default_device() == torch.device("cuda")


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cpu:0", "mps", "cuda:-1"])
def test_bad_device_values_fail_in_one_line(monkeypatch, value):
    monkeypatch.setenv("SCORETUT_DEVICE", value)
    with pytest.raises(UsageError) as err:
        default_device()
    msg = str(err.value)
    assert "\n" not in msg and "SCORETUT_DEVICE" in msg and "auto, cpu, cuda or cuda:N" in msg


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_without_cuda_fails_in_one_clear_line(monkeypatch, value):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SCORETUT_DEVICE", value)
    with pytest.raises(UsageError) as err:
        default_device()
    msg = str(err.value)
    assert "\n" not in msg and "no CUDA device is visible" in msg and "SCORETUT_DEVICE=cpu" in msg


def test_resolve_device(monkeypatch):
    monkeypatch.setenv("SCORETUT_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(torch.device("meta")) == torch.device("meta")  # a device passes through
    with pytest.raises(UsageError, match="not a device"):
        resolve_device("gpu")


def test_entry_points_read_the_environment(monkeypatch):
    """device=None really consults SCORETUT_DEVICE: a bad value reaches every entry point."""
    monkeypatch.setenv("SCORETUT_DEVICE", "bogus")
    model = toy2d.build(toy2d.DEFAULT_RECIPE)
    for call in (lambda: toy2d.generate(model, toy2d.DEFAULT_RECIPE, 10),
                 lambda: toy2d.fit(toy2d.DEFAULT_RECIPE, steps=1),
                 lambda: sampler_comparison.prior_draw(VPSDE(), 100, seed=0),
                 lambda: images.gpu_options()):  # fmt: skip
        with pytest.raises(UsageError, match="SCORETUT_DEVICE='bogus'"):
            call()


def test_outputs_live_on_the_requested_device(monkeypatch):
    monkeypatch.setenv("SCORETUT_DEVICE", "cpu")
    want = torch.device("cpu")
    result = toy2d.fit(toy2d.DEFAULT_RECIPE, steps=2, batch_size=64)
    assert {p.device for p in result.ema.parameters()} == {want}
    x, nfe, _ = toy2d.generate(result.ema, toy2d.DEFAULT_RECIPE, 200, steps=3)
    assert x.device == want and x.shape == (200, 2) and nfe > 0
    assert sampler_comparison.prior_draw(VPSDE(), 200, seed=0).device == want
    # the samplers follow their input's device
    sde = VPSDE()
    x0 = sde.prior_sampling((50, 2), generator=torch.Generator(want).manual_seed(0), device=want)
    y = sample(euler_maruyama, sde, lambda x, t: -x, x0, timesteps(sde, 5), generator=torch.Generator(want))
    assert y.device == want
    # VDM samples on its model's device
    m = vdm.VDM(ScoreMLP(dim=2, hidden=8, depth=1), schedules.LinearSchedule())
    assert vdm2d.generate(m, vdm2d.DEFAULT_RECIPE, 20, steps=3).x.device == want
    # image DDPM: the network runs on the device, images come back on the host
    recipe = images.make_recipe(["a", "b"], 8, "tiny")
    net = images.build(recipe)
    imgs = images.generate(net, recipe, 2, sampler="ddim", steps=2).x
    assert imgs.device == want and imgs.shape == (2, 3, 8, 8)
    assert {p.device for p in net.parameters()} == {want}


def test_gpu_options_are_the_clis_speed_flags(monkeypatch):
    assert images.gpu_options("cpu") == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    opts = images.gpu_options("cuda")
    args = build_parser().parse_args(["ddpm", "train", "--data", "d", "--out", "o", "--amp", "bf16",
                                      "--channels-last"])  # fmt: skip
    assert opts == {"amp": args.amp, "channels_last": args.channels_last}
    TrainConfig(steps=1, **opts)  # valid training options


# -- no hard-coded "cpu" default anywhere ------------------------------------------------------------
# a parameter or keyword named device set to "cpu" (map_location="cpu" of checkpoint loading is a
# storage location, not a compute device: a GPU checkpoint must load on a CPU-only machine)
CPU_DEFAULT = re.compile(r"""(?<![.\w])device\s*(?::[^=,\n]*)?=\s*["']cpu["']""")


def code_cells(md: Path) -> list[str]:
    return re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", md.read_text(), flags=re.S | re.M)


def test_no_hard_coded_cpu_defaults():
    offenders = []
    for path in sorted((ROOT / "scoretut").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if CPU_DEFAULT.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    for path in sorted((ROOT / "book").glob("*.md")):
        for cell in code_cells(path):
            for line in cell.splitlines():
                if re.search(r"""["']cpu["']""", line) or 'device_from_arg("auto")' in line:
                    offenders.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not offenders, "hard-coded CPU device (use scoretut.default_device()):\n" + "\n".join(offenders)


def test_the_scan_catches_a_cpu_default():
    assert CPU_DEFAULT.search('def f(x, device: str | torch.device = "cpu"):')
    assert CPU_DEFAULT.search("    device='cpu',")
    assert not CPU_DEFAULT.search("def f(x, device=None):")
    assert not CPU_DEFAULT.search('def load(path, map_location: str | torch.device | None = "cpu"):')


def test_every_training_chapter_uses_the_device_rule():
    missing = []
    for path in sorted((ROOT / "book").glob("*.md")):
        code = "\n".join(code_cells(path))
        if re.search(r"\b(train|fit)\(", code) and "default_device()" not in code:
            missing.append(path.name)
    assert not missing, f"chapters that train without scoretut.default_device(): {missing}"
    assert "default_device" in scoretut.__all__
