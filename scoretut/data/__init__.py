"""Data sets: :mod:`~scoretut.data.toy2d` (2-D point clouds, Gaussian mixtures with exact scores)
and :mod:`~scoretut.data.images` (AFHQ folder layout, the offline proxy, batches)."""
