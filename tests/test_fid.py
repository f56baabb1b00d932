"""Fréchet distances of image sets: the feature-space distance, the offline classifier, Inception from a file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scoretut.errors import UsageError
from scoretut.data.images import ImageFolder, write_proxy
from scoretut.fid import (
    ClassifierFeatures,
    InceptionFeatures,
    accuracy,
    extract_features,
    fd_of_features,
    load_classifier,
    read_images,
    save_classifier,
    train_classifier,
)
from scoretut.metrics import frechet_distance


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    return write_proxy(tmp_path_factory.mktemp("proxy"), n_train=150, n_val=30, size=16, seed=0)


@pytest.fixture(scope="module")
def classifier(proxy):
    return train_classifier(ImageFolder(proxy, "train", 16), steps=300, batch_size=32, width=16, seed=0)


def test_fd_of_shifted_features_is_the_squared_shift():
    f = np.random.default_rng(0).normal(size=(500, 6)) @ np.diag([1, 2, 3, 0.5, 1, 1])
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 3.0])
    assert fd_of_features(f, f) == pytest.approx(0.0, abs=1e-6)
    assert fd_of_features(f, f + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_fd_of_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = a @ a.T + np.eye(4), b @ b.T + 0.5 * np.eye(4)
    m1, m2 = np.zeros(4), np.array([1.0, 0.0, -1.0, 2.0])
    exact = frechet_distance(m1, c1, m2, c2)
    est = fd_of_features(rng.multivariate_normal(m1, c1, 200_000), rng.multivariate_normal(m2, c2, 200_000))
    assert est == pytest.approx(exact, rel=0.02)


def test_classifier_learns_the_proxy_classes(proxy, classifier):
    val = ImageFolder(proxy, "val", 16)
    assert accuracy(classifier, val) > 0.8  # chance is 1/3


def test_classifier_features_separate_real_from_corrupted_images(proxy, classifier):
    """FD(val, train) is small; FD(val, blurred or noisy train) is larger, and grows with the damage."""
    val = read_images(proxy / "val", 16)
    train = read_images(proxy / "train", 16)
    f_val, f_train = extract_features(classifier, val), extract_features(classifier, train)
    g = torch.Generator().manual_seed(0)
    x = train.float() / 127.5 - 1
    noisy = [(x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1) for s in (0.5, 1.0)]
    fd_noisy = [fd_of_features(f_val, extract_features(classifier, n)) for n in noisy]
    fd_real = fd_of_features(f_val, f_train)
    assert fd_real < fd_noisy[0] < fd_noisy[1]


def test_read_images_is_recursive_and_checks_the_folder(proxy, tmp_path):
    assert read_images(proxy / "val", 8).shape == (90, 3, 8, 8)
    with pytest.raises(UsageError, match="holds no .jpg or .png"):
        read_images(tmp_path, 8)
    with pytest.raises(UsageError, match="does not exist"):
        read_images(tmp_path / "nope", 8)


def test_classifier_round_trip(tmp_path, classifier):
    path = save_classifier(classifier, tmp_path / "c.pt", ["disc", "square", "triangle"], 16, 0.9)
    loaded, meta = load_classifier(path)
    assert meta == {"classes": ["disc", "square", "triangle"], "image_size": 16, "val_accuracy": 0.9}
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.features(x), classifier.features(x))
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(UsageError, match="not a feature classifier"):
        load_classifier(tmp_path / "bad.pt")


def test_classifier_feature_size():
    net = ClassifierFeatures(num_classes=3, width=8)
    assert net.features(torch.zeros(2, 3, 16, 16)).shape == (2, 32)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


@pytest.mark.slow
def test_inception_features_from_a_local_weights_file(tmp_path):
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    reference = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False).eval()
    torch.save(reference.state_dict(), tmp_path / "inception.pth")
    net = InceptionFeatures(tmp_path / "inception.pth")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    feats = extract_features(net, x)
    assert feats.shape == (2, 2048)
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        want = reference(torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear"))
    np.testing.assert_allclose(feats, want.double().numpy(), rtol=1e-4, atol=1e-5)


def test_inception_weights_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        InceptionFeatures(tmp_path / "missing.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(UsageError, match="wrong.pth does not hold inception_v3 weights.*inception_v3_google-0cc3c7bd"):
        InceptionFeatures(tmp_path / "wrong.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")  # not a state dict at all
    with pytest.raises(UsageError, match="list.pth is not a state dict.*IMAGENET1K_V1.*inception_v3_google-0cc3c7bd"):
        InceptionFeatures(tmp_path / "list.pth")
