"""The AFHQ chapter's checkpoint path: real-data layout + a `scoretut ddpm train` checkpoint.

A stand-in AFHQ tree (tiny generated JPEGs in ``{train,val}/{cat,dog,wild}``) and a checkpoint
written by the CLI in the test replace the real data and the GPU run; the chapter is then
executed as a notebook (jupytext + nbclient) with ``SCORETUT_AFHQ_CKPT`` and
``SCORETUT_AFHQ_DATA`` set, and must sample the checkpoint instead of training.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scoretut.cli import main
from scoretut.errors import UsageError
from scoretut.data.images import afhq_dir

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "wild")


def stand_in_afhq(root: Path, n_train: int = 16, n_val: int = 10, side: int = 20) -> Path:
    """Random JPEGs in the AFHQ layout; class k has mean colour channel k brighter."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, (side, side, 3))
                img[..., k] += 120
                Image.fromarray(img.astype(np.uint8)).save(folder / f"flickr_{name}_{i:06d}.jpg")
    return root


def test_afhq_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORETUT_AFHQ_DATA", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="SCORETUT_AFHQ_DATA") as err:
        afhq_dir()
    assert "\n" not in str(err.value)
    data = stand_in_afhq(tmp_path / "afhq", n_train=1, n_val=1)
    monkeypatch.setenv("SCORETUT_AFHQ_DATA", str(data))
    assert afhq_dir() == data


@pytest.mark.slow
def test_afhq_chapter_samples_a_cli_checkpoint(tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    data = stand_in_afhq(tmp_path / "afhq")
    run = tmp_path / "run"
    argv = ["ddpm", "train", "--data", str(data), "--out", str(run), "--steps", "4", "--batch", "4",
            "--net", "tiny", "--image-size", "16", "--cfg", "--log-every", "2", "--sample-every", "0",
            "--quiet", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    ckpt = run / "ckpt.pt"
    for key, value in {"SCORETUT_AFHQ_CKPT": str(ckpt), "SCORETUT_AFHQ_DATA": str(data),
                       "SCORETUT_DEVICE": "cpu", "SCORETUT_SCALE": "fast", "MPLBACKEND": "Agg",
                       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    nb = jupytext.read(ROOT / "book" / "afhq_ddpm.md")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(ROOT / "book")}})  # fmt: skip
    client.execute()
    text = "\n".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")  # fmt: skip
    assert f"checkpoint {ckpt}: 4 steps" in text
    assert f"data: AFHQ from {data}" in text
    assert "classes ['cat', 'dog', 'wild']" in text
    assert "48 training and 30 validation images of 16x16" in text
    assert "4 steps; weighted loss" in text  # the checkpoint's history, not a new run of 800 steps
    assert "800 steps" not in text
    html = "\n".join(str(out.get("data", {}).get("text/html", "")) for cell in nb.cells
                     if cell.cell_type == "code" for out in cell.get("outputs", []))  # fmt: skip
    assert "FD_classifier" in html  # no Inception weights given: the offline metric, named
