"""Labelled image folders in the AFHQ layout, their minibatches, and an offline proxy data set.

Layout (AFHQ, Choi et al. 2020, as unpacked from the StarGAN v2 ``afhq`` zip)::

    ROOT/train/cat/*.jpg   ROOT/train/dog/*.jpg   ROOT/train/wild/*.jpg
    ROOT/val/cat/*.jpg     ROOT/val/dog/*.jpg     ROOT/val/wild/*.jpg

Class names are the sub-directories of ``ROOT/train`` in sorted order, and the label of class
``k`` (0-based) is ``k + 1``: label :data:`NULL_LABEL` ``= 0`` is kept free for the "no class"
input of classifier-free guidance (Ho & Salimans 2022).

An image becomes a tensor in three steps: centre-crop to a square, resize to ``size × size``
(bicubic), and map the bytes ``u ∈ {0..255}`` to ``x = u/127.5 − 1 ∈ [−1, 1]`` (:func:`to_unit`;
the inverse is :func:`to_bytes`). :class:`ImageFolder` keeps the whole split in memory as
``uint8`` (AFHQ at 64×64 is 15k × 12 kB ≈ 180 MB), so training never waits for JPEG decoding.
:class:`ImageBatches` draws the minibatches — epochs without replacement, sharded across
processes by :class:`torch.utils.data.DistributedSampler`, each image flipped left–right with
probability ½ — from seeded generators, so a run resumes exactly from its checkpoint.

:func:`write_proxy` writes a small data set in the same layout from procedurally drawn shapes
(three classes: discs, squares, triangles), for tests, CI and the book, where AFHQ cannot be
downloaded.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from scoretut.errors import UsageError

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUT",
    "NULL_LABEL",
    "PROXY_CLASSES",
    "ImageBatches",
    "ImageFolder",
    "find_images",
    "load_image",
    "to_bytes",
    "to_unit",
    "write_proxy",
]

NULL_LABEL = 0
"""The label of the unconditional ("null") class of classifier-free guidance."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = "ROOT/{train,val}/<class>/*.{jpg,png} (AFHQ: ROOT/train/cat/flickr_cat_000002.jpg)"
SPLITS = ("train", "val")


def to_unit(u: Tensor) -> Tensor:
    """Bytes ``u ∈ {0..255}`` (``uint8``) → ``x = u/127.5 − 1 ∈ [−1, 1]`` (float32)."""
    return u.float() / 127.5 - 1.0


def to_bytes(x: Tensor) -> Tensor:
    """Inverse of :func:`to_unit`: ``round(127.5 (x + 1))`` clipped to ``[0, 255]``, as ``uint8``."""
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _layout_error(root: Path, problem: str) -> UsageError:
    return UsageError(f"{problem}; expected the layout {LAYOUT} with ROOT={root} "
                      "(download AFHQ as the README says, or write the proxy with 'scoretut ddpm proxy')")  # fmt: skip


def find_images(root: str | os.PathLike, split: str = "train",
                classes: Sequence[str] | None = None) -> tuple[list[Path], list[int], list[str]]:  # fmt: skip
    """Image paths, labels and class names of ``root/split``.

    ``classes`` defaults to the sorted sub-directories of ``root/split``; pass the training
    classes when reading ``val`` so both splits share one labelling. The label of ``classes[k]``
    is ``k + 1``. Paths are sorted within each class. Raises :class:`UsageError` naming the
    expected layout when the directory, a class or its images are missing.
    """
    root = Path(root)
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; use one of {SPLITS}")
    if not root.is_dir():
        raise _layout_error(root, f"data directory {root} does not exist")
    base = root / split
    if not base.is_dir():
        raise _layout_error(root, f"{base} is missing")
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            raise _layout_error(root, f"{base} has no class sub-directories")
    else:
        missing = [c for c in classes if c not in found]
        if missing:
            raise _layout_error(root, f"{base} lacks the class directories {missing} of the training split")
    paths: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(classes):
        files = sorted(p for p in (base / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise _layout_error(root, f"{base / name} holds no .jpg or .png images")
        paths += files
        labels += [k + 1] * len(files)
    return paths, labels, list(classes)


def afhq_dir(required: bool = False) -> Path | None:
    """The real AFHQ folder, if there is one: ``SCORETUT_AFHQ_DATA``, else ``data/afhq`` in the
    clone that holds this package (the README layout); ``None`` when it has no ``train`` split
    (a one-line :class:`UsageError` instead when ``required`` or when the variable is set)."""
    env = os.environ.get("SCORETUT_AFHQ_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "data" / "afhq"
    if (root / "train").is_dir():
        return root
    if required or env:
        raise UsageError(f"no AFHQ images in {root}/train; unpack AFHQ there as the README says "
                         "or point SCORETUT_AFHQ_DATA at the folder")  # fmt: skip
    return None


def load_image(path: str | os.PathLike, size: int) -> Tensor:
    """One image as ``uint8`` ``(3, size, size)``: RGB, centre-cropped to a square, bicubic resize."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            im = im.crop((left, top, left + s, top + s))
            if s != size:
                im = im.resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise UsageError(f"cannot read image {path} ({e}); remove or replace the file") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ImageFolder(Dataset):
    """One split of an AFHQ-layout folder, decoded and resized once, kept in memory as ``uint8``.

    ``dataset[i]`` is ``(x, y)``: ``x`` float ``(3, size, size)`` in ``[−1, 1]`` (no flip; the
    random flip belongs to :class:`ImageBatches`), ``y`` the label (``k + 1`` for class ``k``).

    Args:
        root: the data directory (e.g. ``data/afhq``).
        split: ``"train"`` or ``"val"``.
        size: side length after resizing (64 for the AFHQ model).
        classes: class names in label order (default: sorted sub-directories of ``root/split``).
        limit: keep at most this many images per class (the first ones in sorted order).
        threads: decoding threads (PIL releases the GIL while decoding).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", size: int = 64,
                 classes: Sequence[str] | None = None, limit: int | None = None, threads: int = 4):  # fmt: skip
        if not isinstance(size, int) or size < 4:
            raise UsageError(f"image size must be an integer >= 4, got {size!r}")
        paths, labels, self.classes = find_images(root, split, classes)
        if limit is not None:
            if limit < 1:
                raise UsageError(f"the per-class image limit must be positive, got {limit}")
            first = {y: labels.index(y) for y in set(labels)}  # labels are grouped by class
            keep = [i for i, y in enumerate(labels) if i - first[y] < limit]
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        self.root, self.split, self.size = Path(root), split, size
        self.paths = paths
        with ThreadPoolExecutor(max(1, threads)) as pool:
            images = list(pool.map(lambda p: load_image(p, size), paths))
        self.images = torch.stack(images)  # (N, 3, size, size) uint8
        self.labels = torch.tensor(labels, dtype=torch.long)  # (N,) in 1..len(classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return to_unit(self.images[i]), self.labels[i]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def label_of(self, name: str) -> int:
        """The label of class ``name`` (``k + 1``); :class:`UsageError` listing the classes otherwise."""
        if name not in self.classes:
            raise UsageError(f"unknown class {name!r}; choose one of: {', '.join(self.classes)}")
        return self.classes.index(name) + 1


class ImageBatches:
    """Minibatches ``(x, y)`` from an :class:`ImageFolder`: shuffled epochs, random flips, sharding.

    The index order of each epoch is :class:`torch.utils.data.DistributedSampler`'s (a
    permutation seeded by ``seed + epoch``, split into ``world_size`` interleaved shards of
    equal length; this process reads shard ``rank``); batches run on across epoch ends. Each
    image is mirrored left–right with probability ``½`` (if ``flip``), drawn from a CPU
    generator seeded with ``seed + 1000·rank``. :meth:`state_dict` holds the epoch, the
    position in it and the generator state, so a resumed run sees the same batches.
    """

    def __init__(self, dataset: ImageFolder, seed: int = 0, flip: bool = True, rank: int = 0, world_size: int = 1):
        if len(dataset) < world_size:
            raise UsageError(f"{len(dataset)} images cannot be split across {world_size} processes")
        self.dataset, self.flip = dataset, flip
        self.shards = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.generator = torch.Generator().manual_seed(seed + 1000 * rank)
        self.epoch, self.pos = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> Tensor:
        self.shards.set_epoch(self.epoch)
        return torch.tensor(list(iter(self.shards)), dtype=torch.long)

    def indices(self, batch_size: int) -> Tensor:
        """The next ``batch_size`` dataset indices of this shard (continuing into the next epoch)."""
        out = []
        while batch_size > 0:
            take = self._order[self.pos : self.pos + batch_size]
            out.append(take)
            batch_size -= len(take)
            self.pos += len(take)
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order()
        return torch.cat(out)

    def sample(self, batch_size: int) -> tuple[Tensor, Tensor]:
        idx = self.indices(batch_size)
        x = to_unit(self.dataset.images[idx])
        if self.flip:
            mirror = torch.rand(len(idx), generator=self.generator) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x, self.dataset.labels[idx]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self.generator.set_state(state["generator"])
        self._order = self._epoch_order()


# -- the offline proxy ------------------------------------------------------------------------
PROXY_CLASSES = ("disc", "square", "triangle")
"""Class names of the proxy data set (sorted, so label ``k + 1`` is ``PROXY_CLASSES[k]``)."""
PROXY_MARKER = "PROXY.txt"


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    n = {"square": 4, "triangle": 3}[kind]
    return [(cx + r * math.cos(angle + 2 * math.pi * j / n), cy + r * math.sin(angle + 2 * math.pi * j / n))
            for j in range(n)]  # fmt: skip


def draw_shape(kind: str, size: int, rng: np.random.Generator, supersample: int = 4) -> Image.Image:
    """One proxy image: a light shape of class ``kind`` over a dark vertical gradient.

    The background runs from a colour uniform in ``[0, 100]³`` at the top to that colour plus a
    uniform offset in ``[−40, 40]³`` (clipped) at the bottom; the shape's colour is uniform in
    ``[140, 255]³``, so it always stands out. The centre is uniform in the middle 30 % of the
    image, the circumradius uniform in ``[0.25, 0.35]·size``, the rotation uniform. Drawn at
    ``supersample`` times the size and downsampled (Lanczos) for smooth edges. (A deliberately
    simple distribution: a tiny U-Net learns it within minutes on a CPU.)
    """
    big = size * supersample
    top = rng.uniform(0, 100, 3)
    bottom = np.clip(top + rng.uniform(-40, 40, 3), 0, 100)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]  # (size, 1, 1), top to bottom
    background = top * (1 - ramp) + bottom * ramp  # (size, 1, 3)
    colour = rng.uniform(140, 255, 3)
    cx, cy = rng.uniform(0.35, 0.65, 2) * big
    r = rng.uniform(0.25, 0.35) * big
    angle = rng.uniform(0, 2 * math.pi)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "disc":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(_shape_polygon(kind, cx, cy, r, angle), fill=255)
    alpha = np.asarray(mask.resize((size, size), Image.LANCZOS), dtype=np.float64)[:, :, None] / 255.0
    pixels = background * (1 - alpha) + colour * alpha  # (size, size, 3)
    return Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8), "RGB")


def write_proxy(out: str | os.PathLike, n_train: int = 500, n_val: int = 100, size: int = 64, seed: int = 0) -> Path:
    """Write the proxy data set to ``out`` in the AFHQ layout and return ``out``.

    ``n_train`` / ``n_val`` PNG images of ``size × size`` per class of :data:`PROXY_CLASSES`.
    Image ``i`` of class ``k`` in split ``s`` is drawn from a generator seeded with
    ``(seed, s, k, i)``, so the files depend only on the arguments. A directory that already
    holds anything but a proxy is refused.
    """
    out = Path(out)
    if n_train < 1 or n_val < 1 or size < 8:
        raise UsageError("the proxy needs at least 1 image per class and split, and size >= 8")
    if out.exists() and any(out.iterdir()) and not (out / PROXY_MARKER).exists():
        raise UsageError(f"{out} is not empty and holds no proxy data set; choose another `out_dir`")
    try:
        for s, (split, n) in enumerate((("train", n_train), ("val", n_val))):
            for k, name in enumerate(PROXY_CLASSES):
                d = out / split / name
                d.mkdir(parents=True, exist_ok=True)
                for old in d.glob("*.png"):
                    old.unlink()
                for i in range(n):
                    rng = np.random.default_rng([seed, s, k, i])
                    draw_shape(name, size, rng).save(d / f"{name}_{i:05d}.png", optimize=False)
        (out / PROXY_MARKER).write_text(
            f"Offline proxy for AFHQ written by scoretut.data.images.write_proxy: classes {list(PROXY_CLASSES)}, "
            f"{n_train} train + {n_val} val images per class, {size}x{size}, seed {seed}.\n"
        )
    except OSError as e:
        raise UsageError(f"cannot write the proxy to {out} ({e.strerror or e}); choose another `out_dir`") from None
    return out
