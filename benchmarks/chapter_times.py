"""Execute book chapters outside Sphinx and print the wall time of every code cell.

This is how the run cards' times are measured, and the quick way to check one chapter after
an edit: no Sphinx, no cache, the same kernel and working directory (``book/``) as the build.

Usage (from the repository root)::

    python benchmarks/chapter_times.py book/ddpm.md            # one chapter
    python benchmarks/chapter_times.py book/*.md --top 3       # every chapter, 3 slowest cells each
    SCORETUT_SCALE=full python benchmarks/chapter_times.py book/edm.md

Prints, per chapter, the slowest cells (first line of each) and the total; exits with 1 and
the cell's error if a cell fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbclient
from myst_nb.core.read import read_myst_markdown_notebook

ROOT = Path(__file__).resolve().parents[1]


def run_chapter(path: Path, timeout: int = 600) -> list[tuple[float, str]]:
    """Execute the chapter at ``path``; return ``(seconds, first source line)`` per code cell."""
    nb = read_myst_markdown_notebook(path.read_text(), path=path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}  # fmt: skip
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    times = []
    with client.setup_kernel(env=env):
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            start = time.perf_counter()
            client.execute_cell(cell, index)
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            times.append((time.perf_counter() - start, first))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="+", type=Path, help="book/NAME.md files")
    parser.add_argument("--top", type=int, default=5, help="slowest cells to print per chapter (default 5)")
    args = parser.parse_args(argv)
    print(f"scale {os.environ.get('SCORETUT_SCALE', 'fast')}, load average {os.getloadavg()[0]:.2f}")
    grand = 0.0
    for path in args.chapters:
        try:
            times = run_chapter(path)
        except nbclient.exceptions.CellExecutionError as err:
            print(f"{path}: a cell failed\n{err}", file=sys.stderr)
            return 1
        total = sum(t for t, _ in times)
        grand += total
        print(f"\n{path}: {total:.1f} s in {len(times)} cells")
        for t, line in sorted(times, reverse=True)[: args.top]:
            print(f"  {t:7.1f} s  {line[:70]}")
    if len(args.chapters) > 1:
        print(f"\nall chapters: {grand:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
