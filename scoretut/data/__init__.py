"""Data sets: 2-D toy point clouds and Gaussian mixtures with exact scores (:mod:`.toy2d`)."""

from scoretut.data import toy2d
from scoretut.data.toy2d import (
    DATASETS,
    GaussianMixture2D,
    checkerboard,
    eight_gaussians,
    eight_gaussians_mixture,
    gmm_example,
    moons,
    normalise,
    sample_dataset,
    swiss_roll,
)

__all__ = toy2d.__all__
