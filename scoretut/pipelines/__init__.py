"""End-to-end pipelines: a recipe (plain dict, stored in every checkpoint) → model → training →
samples. :mod:`~scoretut.pipelines.toy2d` (2-D data) and :mod:`~scoretut.pipelines.images` (image
DDPM) both offer ``build(recipe)``, ``fit``, ``load(ckpt) -> (model, recipe)`` and ``generate``.
"""
