"""Time the book build: cold (no _build, so every chapter executes) and cached rebuilds.

Usage (from the repository root; deletes and rebuilds ``_build/``)::

    python benchmarks/book_build.py            # cold, cached no-op, cached full re-render
    python benchmarks/book_build.py --no-cold  # keep the execution cache, time rebuilds only

Prints one JSON object with wall-clock seconds per phase. The npm tarballs in
``.cache/vendor/`` are kept, so no phase includes downloading them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ["jupyter-book", "build", ".", "-W", "-n", "--keep-going"]


def timed(cmd: list[str]) -> float:
    """Run ``cmd`` in the repository root; return seconds; exit on failure."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return round(elapsed, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cold", action="store_true", help="skip the cold build")
    args = parser.parse_args()

    result: dict[str, object] = {
        "scale": os.environ.get("SCORETUT_SCALE", "fast"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    if not args.no_cold:
        shutil.rmtree(ROOT / "_build", ignore_errors=True)
        shutil.rmtree(ROOT / ".jupyter_cache", ignore_errors=True)
        result["cold_s"] = timed(BUILD)
    # Nothing changed: Sphinx finds no outdated page.
    result["cached_noop_s"] = timed(BUILD)
    # Every page re-read and re-rendered, every notebook taken from jupyter-cache.
    result["cached_all_pages_s"] = timed([*BUILD, "--all"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
