"""Diff the text outputs of two book builds, chapter by chapter.

    python benchmarks/compare_book_outputs.py OLD/_build NEW/_build

Reads every executed chapter of both builds from their jupyter-cache (``_build/.jupyter_cache/
fast``: the notebooks as executed, with outputs) and compares, cell by cell, the text a reader
sees: streams, ``text/plain``, ``text/markdown`` and ``text/html`` (tables). Only wall-clock
figures are ignored: lines with ``s/it``, ``it/s`` or a tqdm bar are dropped and elapsed times
(``18 s``, ``"seconds": 2.1``) become ``<time>``. Prints a unified diff per chapter; exits 1 if
any chapter differs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sqlite3
import sys
from pathlib import Path

PROGRESS = re.compile(r"s/it|it/s|\d+%\|")  # tqdm bars and rates: the whole line goes
ELAPSED = re.compile(r"\b\d+(\.\d+)?\s*(s|sec|seconds|min)\b|\"seconds\": *[\d.]+")  # the figure goes


def cell_texts(nb_path: Path) -> list[str]:
    """One string per code cell: its text outputs, wall-clock lines removed."""
    cells = json.loads(nb_path.read_text())["cells"]
    out = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        parts, streaming = [], False
        for o in cell.get("outputs", []):
            kind, data = o["output_type"], o.get("data", {})
            if kind == "stream":  # consecutive chunks are one text, as the build merges them
                text = "".join(o["text"])
                parts = parts[:-1] + [parts[-1] + text] if streaming else parts + [text]
            elif kind == "error":
                parts.append(f"[error] {o.get('ename')}: {o.get('evalue')}")
            for mime in ("text/plain", "text/markdown", "text/html"):
                text = "".join(data.get(mime, ""))
                if text and not (mime == "text/plain" and "widget" in text.lower()):  # a widget's repr has an id
                    parts.append(f"[{mime}] {text}")
            streaming = kind == "stream"
        lines = "\n".join(parts).splitlines()
        out.append("\n".join(ELAPSED.sub("<time>", re.sub(r"0x[0-9a-f]+", "0x…", line))
                             for line in lines if not PROGRESS.search(line)))
    return out


def executed(build: Path, scale: str = "fast") -> dict[str, Path]:
    """``{chapter.ipynb: executed notebook}`` from the build's jupyter-cache."""
    cache = build / ".jupyter_cache" / scale
    rows = sqlite3.connect(cache / "global.db").execute("select uri, hashkey from nbcache").fetchall()
    return {Path(uri).with_suffix(".ipynb").name: cache / "executed" / key / "base.ipynb" for uri, key in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    args = parser.parse_args()
    old, new = executed(args.old), executed(args.new)
    differ = False
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            print(f"{name}: only in the {'new' if b else 'old'} build")
            differ = True
            continue
        ca, cb = cell_texts(a), cell_texts(b)
        if len(ca) != len(cb):
            print(f"{name}: {len(ca)} code cells before, {len(cb)} after")
        diff = list(difflib.unified_diff("\n\n".join(ca).splitlines(), "\n\n".join(cb).splitlines(),
                                         f"old/{name}", f"new/{name}", lineterm="", n=1))
        print(f"{name}: {len(ca)} code cells, {'identical text outputs' if not diff else 'DIFFERENT'}")
        if diff:
            differ = True
            print("\n".join(diff))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
