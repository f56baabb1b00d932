"""A fixture that makes "refused before any work" a fact about what runs, not a timing.

``no_work`` replaces every entry point that trains, samples, decodes or draws images or
extracts features with a stand-in that fails the test when called; a bad-input case that still exits
with code 2 under it was refused before any of them started. Import it into a test module
(``from cli_guard import no_work``) and request it.
"""

from __future__ import annotations

import importlib

import pytest

WORK = {
    "scoretut.pipelines.toy2d": ("fit", "generate"),
    "scoretut.train": ("train",),
    "scoretut.metrics": ("evaluate_samples",),
    "scoretut.pipelines.images": ("fit", "generate"),
    "scoretut.fid": ("train_classifier", "extract_features", "read_images", "accuracy"),
    "scoretut.data.images": ("ImageFolder", "draw_shape"),
}
"""The expensive entry points of the CLI commands, by module (the CLI imports them when run)."""


@pytest.fixture
def no_work(monkeypatch):
    def stand_in(name: str):
        def fail(*args, **kwargs):
            pytest.fail(f"{name} was called before the bad input was refused")

        return fail

    # Import every module before patching any: a module imported after ``scoretut.train.train``
    # was patched would bind the stand-in for good (``from scoretut.train import train``).
    modules = {module: importlib.import_module(module) for module in WORK}
    for module, names in WORK.items():
        mod = modules[module]
        for name in names:
            monkeypatch.setattr(mod, name, stand_in(f"{module}.{name}"))
