"""Fréchet distances between two sets of images, in the feature space of a fixed network.

Both sets are mapped to features ``f`` by the same network, each feature cloud is summarised by
its mean and covariance, and the two Gaussians are compared with the Fréchet distance of
:func:`scoretut.metrics.frechet_distance` (Heusel et al. 2017):

.. math::  d^2 = \\|\\mu_r-\\mu_g\\|^2 + \\operatorname{tr}\\big(\\Sigma_r+\\Sigma_g-2(\\Sigma_r\\Sigma_g)^{1/2}\\big).

Two feature networks, and the number says which one it came from (:data:`FID_INCEPTION`,
:data:`FD_CLASSIFIER`):

* **FID** — the 2048 pooled features of Inception-v3 (Szegedy et al. 2016), the standard
  metric. The weights cannot be downloaded at run time, so :class:`InceptionFeatures` reads a
  local copy of torchvision's ``inception_v3`` weights (``IMAGENET1K_V1``,
  ``inception_v3_google-0cc3c7bd.pth``; the README says how to get it). Images are resized to
  299×299 (bilinear) and fed in ``[−1, 1]``, the range these weights were trained on. Papers
  use the TensorFlow Inception graph, whose weights differ slightly, so values are close to
  but not the same as published FIDs.
* **FD_classifier** — offline: the pooled features of :class:`ClassifierFeatures`, a small CNN
  trained here to tell the data set's classes apart (:func:`train_classifier`). It ranks
  models of the *same* data set, but its scale has nothing to do with FID's.

Feature covariances need many more images than feature dimensions to be estimated well (FID
is usually reported on ≥ 10k images); with few images both distances are biased upwards.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scoretut.checkpoint import load_checkpoint, save_checkpoint
from scoretut.data.images import IMAGE_SUFFIXES, ImageBatches, ImageFolder, load_image, to_unit
from scoretut.errors import UsageError
from scoretut.metrics import feature_stats, frechet_distance
from scoretut.runtime import resolve_device
from scoretut.train import TrainConfig, train

__all__ = [
    "FD_CLASSIFIER",
    "FID_INCEPTION",
    "ClassifierFeatures",
    "InceptionFeatures",
    "extract_features",
    "fd_of_features",
    "image_files",
    "load_classifier",
    "read_images",
    "save_classifier",
    "train_classifier",
]

FID_INCEPTION = "FID (Inception-v3 pool features, torchvision IMAGENET1K_V1 weights)"
FD_CLASSIFIER = ("FD_classifier (offline: features of a small classifier trained on this data set; "
                 "not comparable with FID)")  # fmt: skip
CLASSIFIER_FORMAT = "scoretut-fd-classifier-v1"


def read_images(path: str | os.PathLike, size: int) -> Tensor:
    """Every ``.jpg``/``.png`` under ``path`` (recursively, sorted) as ``uint8`` ``(N, 3, size, size)``."""
    return torch.stack([load_image(p, size) for p in image_files(path)])


def image_files(path: str | os.PathLike) -> list[Path]:
    """The ``.jpg``/``.png`` files under ``path`` (recursively, sorted); UsageError if there are none."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"image directory {path} does not exist; pass a folder of .jpg/.png images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{path} holds no .jpg or .png images; pass the folder written by 'scoretut ddpm sample'")
    return files


def fd_of_features(real: Tensor | np.ndarray, fake: Tensor | np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(n, d)`` and ``(m, d)``."""
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, batch_size: int = 100,
                     device: str | torch.device | None = None) -> np.ndarray:  # fmt: skip
    """``net.features`` of ``images`` (``uint8`` bytes or floats in ``[−1, 1]``) as float64 ``(N, d)``,
    computed on ``device`` (``None``: :func:`scoretut.default_device`)."""
    device = resolve_device(device)
    net = net.to(device).eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        x = to_unit(x) if x.dtype == torch.uint8 else x.float()
        out.append(net.features(x.to(device)).double().cpu())
    return torch.cat(out).numpy()


# -- Inception-v3 from a local file ----------------------------------------------------------------
class InceptionFeatures(nn.Module):
    """Inception-v3's 2048 pooled features, with weights read from ``weights`` (no download).

    ``weights`` is a ``state_dict`` file of ``torchvision.models.inception_v3`` (e.g. the
    ``IMAGENET1K_V1`` file ``inception_v3_google-0cc3c7bd.pth``), loaded with
    ``torch.load(weights_only=True)``.
    """

    def __init__(self, weights: str | os.PathLike):
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"Inception weights {path} not found; download inception_v3_google-0cc3c7bd.pth "
                             "as the README says, or drop `inception_weights` for the offline FD")  # fmt: skip
        source = ("expected torchvision's inception_v3 IMAGENET1K_V1 state dict, the file "
                  "inception_v3_google-0cc3c7bd.pth (see the README)")  # fmt: skip
        try:
            state = load_checkpoint(path)
        except UsageError as e:
            raise UsageError(f"`inception_weights` {path} is not a state dict ({e}); {source}") from None
        net = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise UsageError(f"`inception_weights` {path} does not hold inception_v3 weights "
                             f"({str(e).splitlines()[0]}); {source}") from None  # fmt: skip
        net.fc = nn.Identity()
        net.aux_logits, net.AuxLogits = False, None
        self.net = net.eval()

    def features(self, x: Tensor) -> Tensor:
        """``x`` ``(B, 3, H, W)`` in ``[−1, 1]`` → ``(B, 2048)``."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x)


# -- the offline feature network -------------------------------------------------------------------
class ClassifierFeatures(nn.Module):
    """A small CNN classifier; its globally pooled last feature map is the FD feature space.

    Four 3×3 convolutions (widths ``width·(1, 2, 4, 4)``, the last three with stride 2), each
    followed by GroupNorm and SiLU, global average pooling to ``4·width`` features, and a
    linear layer to ``num_classes`` logits (class ``k`` has label ``k + 1`` in the data).
    """

    def __init__(self, num_classes: int, width: int = 16):
        super().__init__()
        self._config = {"num_classes": int(num_classes), "width": int(width)}
        widths = [width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        c_in = 3
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c_in, w, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(4, w), nn.SiLU()]
            c_in = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """``x`` ``(B, 3, H, W)`` in ``[−1, 1]`` → ``(B, 4·width)``."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def config(self) -> dict[str, Any]:
        return dict(self._config)


def _cross_entropy(model: nn.Module, batch: tuple[Tensor, Tensor], generator=None) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y - 1)


@torch.no_grad()
def accuracy(model: nn.Module, dataset: ImageFolder, device: str | torch.device | None = None) -> float:
    """Fraction of ``dataset`` (unflipped) that ``model`` classifies correctly (on ``device``)."""
    device = resolve_device(device)
    model = model.to(device).eval()
    hits = 0
    for start in range(0, len(dataset), 200):
        x = to_unit(dataset.images[start : start + 200]).to(device)
        hits += int((model(x).argmax(1).cpu() + 1 == dataset.labels[start : start + 200]).sum())
    return hits / len(dataset)


def train_classifier(dataset: ImageFolder, steps: int = 1000, batch_size: int = 64, lr: float = 2e-3,
                     width: int = 16, seed: int = 0, device: str | torch.device | None = None) -> ClassifierFeatures:  # fmt: skip
    """Train :class:`ClassifierFeatures` on ``dataset`` (random flips) with cross-entropy and AdamW,
    through :func:`scoretut.train.train` (its EMA is switched off)."""
    torch.manual_seed(seed)
    model = ClassifierFeatures(dataset.num_classes, width)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=min(100, steps // 10 + 1), ema_decay=0.0,
                      seed=seed, log_every=max(1, steps // 10), progress=False)  # fmt: skip
    return train(model, _cross_entropy, ImageBatches(dataset, seed=seed), cfg, device=resolve_device(device)).model.eval()


def save_classifier(model: ClassifierFeatures, path: str | os.PathLike, classes: list[str], image_size: int,
                    val_accuracy: float | None = None) -> Path:  # fmt: skip
    """Store a trained feature classifier (weights and plain metadata) with :mod:`scoretut.checkpoint`."""
    return save_checkpoint(path, {"format": CLASSIFIER_FORMAT, "config": model.config(), "model": model.state_dict(),
                                  "classes": list(classes), "image_size": int(image_size),
                                  "val_accuracy": val_accuracy})  # fmt: skip


def load_classifier(path: str | os.PathLike) -> tuple[ClassifierFeatures, dict[str, Any]]:
    """Inverse of :func:`save_classifier`: ``(model, metadata)``."""
    state = load_checkpoint(path)
    if state.get("format") != CLASSIFIER_FORMAT:
        raise UsageError(f"{path} is not a feature classifier written by 'scoretut ddpm fid'; pass another `classifier`")
    model = ClassifierFeatures(**state["config"])
    model.load_state_dict(state["model"])
    return model.eval(), {k: state[k] for k in ("classes", "image_size", "val_accuracy")}
