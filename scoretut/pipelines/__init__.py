"""End-to-end pipelines, recipe → model → training → samples: :mod:`~scoretut.pipelines.toy2d` and
:mod:`~scoretut.pipelines.images`, each with ``build(recipe)``, ``fit``, ``load`` and ``generate``."""
