"""Image folders in the AFHQ layout, their minibatches, and the offline proxy data set."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scoretut.errors import UsageError
from scoretut.data.images import (
    NULL_LABEL,
    PROXY_CLASSES,
    ImageBatches,
    ImageFolder,
    find_images,
    draw_shape,
    load_image,
    to_bytes,
    to_unit,
    write_proxy,
)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory) -> Path:
    return write_proxy(tmp_path_factory.mktemp("proxy"), n_train=6, n_val=2, size=16, seed=0)


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_byte_scaling_is_the_affine_map_to_minus_one_one_and_inverts_exactly():
    u = torch.arange(256, dtype=torch.uint8)
    x = to_unit(u)
    assert x[0] == -1 and x[-1] == 1
    torch.testing.assert_close(x, u.double().div(127.5).sub(1).float())
    assert torch.equal(to_bytes(x), u)
    assert torch.equal(to_bytes(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))


def test_proxy_layout_labels_and_class_names(proxy):
    paths, labels, classes = find_images(proxy, "train")
    assert classes == sorted(PROXY_CLASSES) == list(PROXY_CLASSES)
    assert labels == [1] * 6 + [2] * 6 + [3] * 6  # sorted class index + 1
    assert NULL_LABEL == 0 and NULL_LABEL not in labels
    assert all(p.parent.name == classes[y - 1] for p, y in zip(paths, labels))
    val = ImageFolder(proxy, "val", size=16, classes=classes)
    assert len(val) == 6 and val.labels.tolist() == [1, 1, 2, 2, 3, 3]


def test_image_folder_tensors(proxy):
    ds = ImageFolder(proxy, "train", size=8)
    assert ds.images.shape == (18, 3, 8, 8) and ds.images.dtype == torch.uint8
    x, y = ds[7]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and int(y) == 2
    assert -1 <= float(x.min()) and float(x.max()) <= 1
    assert ds.num_classes == 3 and ds.label_of("triangle") == 3
    with pytest.raises(UsageError, match="disc, square, triangle"):
        ds.label_of("cat")
    assert len(ImageFolder(proxy, "train", size=8, limit=2)) == 6


def test_load_image_centre_crops_then_resizes(tmp_path):
    # a 30×10 image: a red 10×10 square in the middle, blue on both sides
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :, 2] = 255
    arr[:, 10:20] = [255, 0, 0]
    Image.fromarray(arr).save(tmp_path / "wide.png")
    img = load_image(tmp_path / "wide.png", 4)
    assert img.shape == (3, 4, 4)
    assert torch.equal(img[:, 0, 0], torch.tensor([255, 0, 0], dtype=torch.uint8))
    assert (img[0] == 255).all() and (img[2] == 0).all()  # only the red centre survives


def test_epochs_visit_every_image_once_and_shards_partition_the_data(proxy):
    ds = ImageFolder(proxy, "train", size=8)
    one = ImageBatches(ds, seed=3, flip=False)
    drawn = torch.cat([one.indices(4) for _ in range(9)])  # 36 indices: exactly two epochs
    assert sorted(drawn[:18].tolist()) == sorted(drawn[18:].tolist()) == list(range(18))
    assert not torch.equal(drawn[:18], drawn[18:])  # each epoch has its own order
    a = ImageBatches(ds, seed=3, rank=0, world_size=2).indices(9)
    b = ImageBatches(ds, seed=3, rank=1, world_size=2).indices(9)
    assert sorted(a.tolist() + b.tolist()) == list(range(18))


def test_batches_are_images_flipped_with_probability_one_half(proxy):
    ds = ImageFolder(proxy, "train", size=8)
    batches = ImageBatches(ds, seed=0)
    flips = n = 0
    for _ in range(100):
        state = batches.state_dict()
        x, y = batches.sample(9)
        replay = ImageBatches(ds, seed=0)
        replay.load_state_dict(state)
        idx = replay.indices(9)
        plain, mirrored = to_unit(ds.images[idx]), to_unit(ds.images[idx]).flip(-1)
        assert torch.equal(y, ds.labels[idx])
        is_plain = (x == plain).flatten(1).all(1)
        is_mirror = (x == mirrored).flatten(1).all(1)
        assert bool((is_plain | is_mirror).all())
        symmetric = is_plain & is_mirror
        flips += int((is_mirror & ~symmetric).sum())
        n += int((~symmetric).sum())
    # Binomial(n, 1/2): 5 standard deviations
    assert abs(flips / n - 0.5) < 5 * 0.5 / n**0.5


def test_batches_are_deterministic_and_resume_exactly(proxy):
    ds = ImageFolder(proxy, "train", size=8)
    full = ImageBatches(ds, seed=1)
    want = [full.sample(5) for _ in range(9)]
    part = ImageBatches(ds, seed=1)
    got = [part.sample(5) for _ in range(4)]
    resumed = ImageBatches(ds, seed=1)
    resumed.load_state_dict(part.state_dict())
    got += [resumed.sample(5) for _ in range(5)]
    for (xa, ya), (xb, yb) in zip(want, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = ImageBatches(ds, seed=2).sample(5)
    assert not torch.equal(other[0], want[0][0])


def test_proxy_is_a_function_of_its_seed(tmp_path):
    a = write_proxy(tmp_path / "a", n_train=2, n_val=1, size=12, seed=5)
    b = write_proxy(tmp_path / "b", n_train=2, n_val=1, size=12, seed=5)
    c = write_proxy(tmp_path / "c", n_train=2, n_val=1, size=12, seed=6)
    assert digest(a) == digest(b) != digest(c)
    assert digest(write_proxy(a, n_train=2, n_val=1, size=12, seed=5)) == digest(b)  # rewriting is allowed


class QueuedRng:
    """Stands in for ``np.random.Generator``: ``uniform`` returns the queued values in order."""

    def __init__(self, *values):
        self.values = list(values)

    def uniform(self, low=0.0, high=1.0, size=None):
        return np.asarray(self.values.pop(0), dtype=np.float64)


@pytest.mark.parametrize("kind, area", [("disc", np.pi), ("square", 2.0), ("triangle", 3 * np.sqrt(3) / 4)])
def test_proxy_shapes_have_the_area_of_their_polygon(kind, area):
    """Area over r² of a shape with circumradius r: π (disc), 2 (square), 3√3/4 (triangle)."""
    black, white = [0.0, 0.0, 0.0], [255.0, 255.0, 255.0]
    rng = QueuedRng(black, black, white, [0.5, 0.5], 0.3, 0.7)  # top, offset, colour, centre, r/size, angle
    size = 64
    img = np.asarray(draw_shape(kind, size, rng), dtype=np.float64)
    assert np.allclose(img[0, 0], 0) and np.allclose(img[size // 2, size // 2], 255)
    measured = img[..., 0].sum() / 255.0 / (0.3 * size) ** 2
    assert measured == pytest.approx(area, rel=0.02)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda r: r / "nowhere", "does not exist"),
        (lambda r: (r / "val").mkdir() or r, "train is missing"),
        (lambda r: (r / "train").mkdir() or r, "no class sub-directories"),
        (lambda r: (r / "train" / "cat").mkdir(parents=True) or r, "holds no .jpg or .png"),
    ],
)
def test_malformed_data_directories_name_the_layout(tmp_path, make, message):
    root = make(tmp_path)
    with pytest.raises(UsageError, match=message) as e:
        ImageFolder(root, "train", size=8)
    assert "train,val" in str(e.value) and "\n" not in str(e.value)


def test_val_split_must_have_the_training_classes(proxy, tmp_path):
    root = tmp_path / "d"
    for split, classes in (("train", ["cat", "dog"]), ("val", ["cat"])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / c / "a.png")
    with pytest.raises(UsageError, match="lacks the class directories"):
        ImageFolder(root, "val", size=8, classes=["cat", "dog"])


def test_unreadable_image_and_bad_size(tmp_path, proxy):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UsageError, match="cannot read image"):
        ImageFolder(tmp_path, "train", size=8)
    with pytest.raises(UsageError, match="image size"):
        ImageFolder(proxy, "train", size=2)


def test_proxy_refuses_a_directory_with_other_content(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UsageError, match="choose another `out_dir`"):
        write_proxy(tmp_path, n_train=1, n_val=1, size=8)
