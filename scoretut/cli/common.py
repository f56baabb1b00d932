"""Helpers shared by the ``scoretut`` commands: the one-line-error parser, argument types, the
writable-directory check, and :func:`with_flags`, which turns the argument names a library error
names (in backticks: `` `lr` ``, `` `out_dir` ``) into this command line's flags (``--lr``, ``--out``).
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from scoretut.errors import UsageError

ARG_FLAGS = {"out_dir": "--out", "batch_size": "--batch"}  # the rest: "--" + name with "-" for "_"


def with_flags(message: str) -> str:
    """``message`` with every backticked argument name replaced by its flag."""
    return re.sub(r"`(\w+)`", lambda m: ARG_FLAGS.get(m[1], "--" + m[1].replace("_", "-")), message)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str):
        raise UsageError(f"{message}; see '{self.prog} --help'")


def positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def writable_dir(path: Path, flag: str) -> Path:
    """Create ``path`` if needed and check a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to {path} ({e.strerror or e}); choose another {flag}") from None
    return path


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (CPU runs are deterministic)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
