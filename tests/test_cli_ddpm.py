"""``scoretut ddpm proxy|train|sample|fid`` end to end on a tiny proxy, and their one-line errors."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_guard import no_work  # noqa: F401  (fixture)
from scoretut.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


TRAIN = ("--image-size", "8", "--net", "tiny", "--batch", "4", "--lr", "1e-3", "--warmup", "1", "--ema-decay", "0.9",
         "--log-every", "2", "--device", "cpu", "--quiet")  # fmt: skip


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Path:
    from scoretut.data.images import write_proxy

    return write_proxy(tmp_path_factory.mktemp("data") / "proxy", n_train=8, n_val=4, size=8, seed=0)


@pytest.fixture(scope="module")
def run_dir(proxy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = main(["ddpm", "train", "--data", str(proxy), "--save_dir", str(out), "--steps", "4", "--use_cfg",
                 "--sample-every", "2", *TRAIN])  # fmt: skip
    assert code == 0
    return out


def test_proxy_command_writes_the_layout(tmp_path, capsys):
    code, out, _ = run(capsys, "ddpm", "proxy", "--out", tmp_path / "p", "--n-train", "2", "--n-val", "1", "--size", "8")
    assert code == 0 and json.loads(out)["classes"] == 3
    assert len(list((tmp_path / "p" / "train" / "square").glob("*.png"))) == 2
    assert len(list((tmp_path / "p" / "val" / "disc").glob("*.png"))) == 1


def test_train_writes_checkpoint_grids_and_loss_curve(run_dir):
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == ["ckpt.pt", "loss.png", "samples_0000002.png", "samples_0000004.png"]
    state = torch.load(run_dir / "ckpt.pt", weights_only=True)
    assert state["config"]["recipe"]["net"]["num_classes"] == 3 and state["config"]["recipe"]["cfg_drop"] == 0.1


def test_min_snr_gamma_is_stored_in_the_recipe_and_absent_by_default(proxy, run_dir, tmp_path):
    out = tmp_path / "snr"
    code = main(["ddpm", "train", "--data", str(proxy), "--out", str(out), "--steps", "2", "--min-snr-gamma", "5",
                 "--sample-every", "0", *TRAIN])  # fmt: skip
    assert code == 0
    assert torch.load(out / "ckpt.pt", weights_only=True)["config"]["recipe"]["min_snr_gamma"] == 5.0
    assert "min_snr_gamma" not in torch.load(run_dir / "ckpt.pt", weights_only=True)["config"]["recipe"]


def test_resume_through_the_cli_equals_an_uninterrupted_run(proxy, tmp_path, capsys):
    args = ("ddpm", "train", "--data", proxy, "--sample-every", "0", *TRAIN)
    assert run(capsys, *args, "--out", tmp_path / "full", "--steps", "4")[0] == 0
    assert run(capsys, *args, "--out", tmp_path / "part", "--steps", "2")[0] == 0
    code, out, _ = run(capsys, *args, "--out", tmp_path / "part", "--steps", "4", "--resume")
    assert code == 0 and json.loads(out)["steps"] == 4
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)["ema"]
    b = torch.load(tmp_path / "part" / "ckpt.pt", weights_only=True)["ema"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sample_then_fid(run_dir, proxy, tmp_path, capsys):
    out = tmp_path / "samples"
    code, text, _ = run(capsys, "ddpm", "sample", "--ckpt_path", run_dir / "ckpt.pt", "--save_dir", out, "--n", "6",
                        "--sampler", "ddim", "--steps", "3", "--label", "disc", "--cfg-scale", "2", "--device", "cpu",
                        "--grid", tmp_path / "grid.png")  # fmt: skip
    assert code == 0, text
    info = json.loads(text)
    assert info["n"] == 6 and info["cfg_scale"] == 2.0 and info["steps"] == 3
    assert len(list(out.glob("*.png"))) == 6 and (tmp_path / "grid.png").is_file()
    # a second run into the same folder must be asked for
    code, _, err = run(capsys, "ddpm", "sample", "--ckpt", run_dir / "ckpt.pt", "--out", out, "--n", "2", "--steps", "2",
                       "--sampler", "ddim", "--device", "cpu")  # fmt: skip
    assert code == 2 and "--overwrite" in err
    classifier = tmp_path / "clf.pt"
    args = ("ddpm", "fid", "--real", proxy / "val", "--fake", out, "--size", "8", "--classifier-steps", "5",
            "--classifier", classifier, "--device", "cpu")  # fmt: skip
    code, text, _ = run(capsys, *args)
    first = json.loads(text)
    assert code == 0 and first["metric"].startswith("FD_classifier") and first["n_real"] == 12 and first["n_fake"] == 6
    assert first["value"] >= 0 and classifier.is_file()
    code, text, _ = run(capsys, *args)  # the cached classifier gives the same number
    assert code == 0 and json.loads(text)["value"] == first["value"]


def _empty_dir(path: Path) -> None:
    path.mkdir()


def _list_not_state_dict(path: Path) -> None:
    torch.save([1, 2, 3], path)


def _other_state_dict(path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(1)}, path)


def _plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": [1.0]}, protocol=4))


def _not_images(path: Path) -> None:
    (path / "train" / "cat").mkdir(parents=True)
    (path / "train" / "cat" / "notes.txt").write_text("no images here")


R, F = ("--real", "{proxy}/val"), ("--fake", "{tmp}/x")  # an existing image folder; the made input
SA = ("ddpm", "sample", "--ckpt", "{run}/ckpt.pt", "--out", "{tmp}/s", "--device", "cpu")
TR = ("ddpm", "train", "--data", "{proxy}", "--device", "cpu", "--steps", "4")
BAD = {  # argv, a piece of the message, optionally a function that makes {tmp}/x
    "proxy: images too small": (("ddpm", "proxy", "--out", "{tmp}/p", "--size", "4"), "size >= 8"),
    "proxy: into a used folder": (("ddpm", "proxy", "--out", "{tmp}"), "choose another --out"),
    "proxy: unwritable out": (("ddpm", "proxy", "--out", "{tmp}/file.txt/p"), "choose another --out"),
    "train: no data folder": (("ddpm", "train", "--data", "{tmp}/none", "--out", "{tmp}/r"), "expected the layout"),
    "train: data without images": (("ddpm", "train", "--data", "{tmp}/x", "--out", "{tmp}/r"), "holds no .jpg",
                                   lambda p: _not_images(p)),
    "train: image size": ((*TR, "--out", "{tmp}/r", "--image-size", "10", "--net", "tiny"), "divisible by 4"),
    "train: bad label drop": ((*TR, "--out", "{tmp}/r", "--cfg", "--cfg-drop", "1.5"), "--cfg-drop"),
    "train: sample-every off the log": ((*TR, "--out", "{tmp}/r", "--log-every", "3", "--sample-every", "4"),
                                        "multiple of --log-every"),
    "train: ema decay": ((*TR, "--out", "{tmp}/r", "--ema-decay", "2"), "--ema-decay 2"),
    "train: min-SNR gamma": ((*TR, "--out", "{tmp}/r", "--min-snr-gamma", "0"), "--min-snr-gamma must be positive"),
    "train: into a used run": ((*TR, "--out", "{run}"), "pass --resume"),
    "train: resume nothing": ((*TR, "--out", "{tmp}/fresh", "--resume"), "drop --resume"),
    "train: unwritable out": ((*TR, "--out", "{tmp}/file.txt/r"), "choose another --out"),
    "sample: missing ckpt": (("ddpm", "sample", "--ckpt", "{tmp}/none.pt", "--out", "{tmp}/s"), "does not exist"),
    "sample: ckpt with objects": (("ddpm", "sample", "--ckpt", "{tmp}/x", "--out", "{tmp}/s"), "will not unpickle",
                                  _plain_pickle),
    "sample: toy ckpt": (("ddpm", "sample", "--ckpt", "{tmp}/x", "--out", "{tmp}/s"), "not a 'scoretut ddpm train'",
                         lambda p: torch.save({"config": {"kind": "toy"}, "ema": {}}, p)),
    "sample: unknown label": ((*SA, "--label", "cat"), "unknown class 'cat'"),
    "sample: steps beyond T": ((*SA, "--steps", "5000"), "at most --steps 1000"),
    "sample: unknown sampler": ((*SA, "--sampler", "heun"), "invalid choice"),
    "sample: unwritable out": (("ddpm", "sample", "--ckpt", "{run}/ckpt.pt", "--out", "{tmp}/file.txt/s"),
                               "choose another --out"),
    "sample: unwritable grid": ((*SA, "--grid", "{tmp}/file.txt/g.png"), "choose another --grid"),
    "sample: full folder": ((*SA[:5], "{run}", "--n", "2"), "--overwrite"),
    "fid: no classifier source": (("ddpm", "fid", "--real", "{tmp}", "--fake", "{proxy}/val"), "holds no .jpg"),
    "fid: empty fake": (("ddpm", "fid", *R, *F), "--fake: ", _empty_dir),
    "fid: empty real": (("ddpm", "fid", "--real", "{tmp}/x", "--fake", "{proxy}/val"), "--real: ", _empty_dir),
    "fid: missing folder": (("ddpm", "fid", "--real", "{tmp}/none", "--fake", "{proxy}/val"), "is not a folder"),
    "fid: real without a data root": (("ddpm", "fid", "--real", "{proxy}/val/disc", "--fake", "{proxy}/val"),
                                      "--classifier-data"),
    "fid: classifier data without layout": (("ddpm", "fid", *R, "--fake", "{proxy}/val", "--classifier-data", "{tmp}"),
                                            "expected the layout"),
    "fid: classifier not one": (("ddpm", "fid", *R, "--fake", "{proxy}/val", "--classifier", "{tmp}/x"),
                                "not a feature classifier", _other_state_dict),
    "fid: missing inception file": (("ddpm", "fid", *R, "--fake", "{proxy}/val", "--inception-weights", "{tmp}/w.pth"),
                                    "not found"),
    "fid: inception file not a state dict": (("ddpm", "fid", *R, "--fake", "{proxy}/val", "--inception-weights",
                                              "{tmp}/x"), "inception_v3_google-0cc3c7bd.pth", _list_not_state_dict),
    "fid: inception file a pickle": (("ddpm", "fid", *R, "--fake", "{proxy}/val", "--inception-weights", "{tmp}/x"),
                                     "inception_v3_google-0cc3c7bd.pth", _plain_pickle),
    "fid: inception file of another net": (("ddpm", "fid", *R, "--fake", "{proxy}/val", "--inception-weights",
                                            "{tmp}/x"), "IMAGENET1K_V1", _other_state_dict),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_with_exit_code_2_before_any_work(case, proxy, run_dir, tmp_path, capsys, no_work):
    argv, message, *make = BAD[case]
    (tmp_path / "file.txt").write_text("a file, not a directory")
    if make:
        make[0](tmp_path / "x")
    args = [a.format(tmp=tmp_path, proxy=proxy, run=run_dir) for a in argv]
    code, out, err = run(capsys, *args)
    assert code == 2, (case, out, err)
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("scoretut: error:") and out == ""


@pytest.mark.slow
def test_torchrun_trains_with_two_cpu_processes(proxy, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scoretut",
           "ddpm", "train", "--data", str(proxy), "--out", str(tmp_path / "ddp"), "--steps", "2", "--cfg",
           "--sample-every", "0", *TRAIN]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["processes"] == 2  # only rank 0 reports
    state = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)
    assert len(state["ranks"]) == 2


def test_the_no_work_guard_stops_a_valid_command(proxy, tmp_path, no_work):
    # the guard is live: a good FD command reaches the classifier's data loading and fails there
    with pytest.raises(pytest.fail.Exception, match="ImageFolder"):
        main(["ddpm", "fid", "--real", str(proxy / "val"), "--fake", str(proxy / "val"), "--device", "cpu"])
