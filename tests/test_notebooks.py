"""Every chapter as a downloadable .ipynb: the converter (no build) and the built site (`site`)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "book" / "_ext"))
from scoretut_notebooks import is_notebook, to_notebook  # noqa: E402

SITE = ROOT / "_build" / "html"


def chapters() -> list[Path]:
    """The notebook pages of _toc.yml, in reading order."""
    files = re.findall(r"^\s*(?:root|- file):\s*(\S+)", (ROOT / "_toc.yml").read_text(), flags=re.M)
    return [p for p in (ROOT / f"{f}.md" for f in files) if is_notebook(p)]


def md_code_cells(md: Path) -> list[str]:
    """The code-cell bodies of a MyST chapter, read without jupytext (options block dropped)."""
    cells = re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```\s*$", md.read_text(), flags=re.S | re.M)
    return [re.sub(r"\A---\n.*?\n---\n", "", c, flags=re.S).strip("\n") for c in cells]


def nb_code_cells(nb) -> list[str]:
    return [c.source.strip("\n") for c in nb.cells if c.cell_type == "code"]


def test_every_chapter_is_a_notebook():
    names = [p.stem for p in chapters()]
    on_disk = {p.stem for p in (ROOT / "book").glob("*.md") if is_notebook(p)}
    assert names[0] == "intro" and len(names) == len(set(names)) and set(names) == on_disk
    assert {"ou", "afhq_ddpm", "flow_matching", "bridge"} <= on_disk


@pytest.mark.parametrize("md", chapters(), ids=lambda p: p.stem)
def test_conversion_keeps_code_and_reads_in_plain_jupyter(md):
    nb = to_notebook(md)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb_code_cells(nb) == md_code_cells(md)  # all code cells, in order, unchanged
    first = nb.cells[0]
    assert first.cell_type == "markdown" and "pip install -r requirements.txt" in first.source
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for myst in (":::{", "{cite", "{eq}", "{glue", "{numref}", "{admonition}", "{exercise}", "{solution-"):
        assert myst not in text, f"{md.name}: MyST construct {myst!r} left in the notebook"
    assert not re.search(r"^[ \t]*\$\$[ \t]*\(", text, flags=re.M), "equation labels must become \\tag{n}"
    labels = re.findall(r"^[ \t]*\$\$[ \t]*\(([\w:-]+)\)", md.read_text(), flags=re.M)
    assert re.findall(r"\\tag\{(\d+)\}", text) == [str(i) for i in range(1, len(labels) + 1)]


def test_conversion_details():
    nb = to_notebook(ROOT / "book" / "afhq_ddpm.md")
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "> **Run card**" in text  # the run card is a block quote with its title
    assert "Ho et al. 2020" in text and "Ho et al. (2020)" in text  # {cite} and {cite:t}
    assert "\\tag{1}" in text and "\\tag{2}" in text and "{eq}" not in text
    ou = to_notebook(ROOT / "book" / "ou.md")
    ou_text = "\n".join(c.source for c in ou.cells if c.cell_type == "markdown")
    assert re.search(r"\(\d+\)", ou_text)  # {eq}`...` became a number
    bridge = to_notebook(ROOT / "book" / "bridge.md")
    assert "`sb_neval`" in "\n".join(c.source for c in bridge.cells)  # glued values are named
    assert to_notebook(ROOT / "book" / "ou.md") == ou  # deterministic (stable cell ids)


def test_exercises_become_block_quotes_and_solution_headers():
    md = ROOT / "book" / "ou.md"
    titles = re.findall(r"^```\{exercise\}[ \t]*(.+)$", md.read_text(), flags=re.M)
    assert titles, "ou.md has no exercises to convert"
    nb = to_notebook(md)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for title in titles:
        assert f"> **Exercise: {title}**" in text  # the exercise as a titled block quote
        assert f"**Solution ({title})**" in text  # the solution names its exercise
    assert ":label:" not in text and ":class: dropdown" not in text  # directive options dropped
    assert all(c.source.strip() for c in nb.cells if c.cell_type == "markdown")  # no empty cells
    # the solution's code cells stay code cells, after the solution header
    sources = [(c.cell_type, c.source) for c in nb.cells]
    header = next(i for i, (_, s) in enumerate(sources) if s.startswith(f"**Solution ({titles[0]})**")
                  or f"\n**Solution ({titles[0]})**" in s)  # fmt: skip
    assert sources[header + 1][0] == "code"


# -- the built site -----------------------------------------------------------------------------------
def site_notebooks() -> dict[str, Path]:
    return {p.stem: p for p in (SITE / "_sources" / "book").glob("*.ipynb")}


@pytest.mark.site
def test_site_has_one_notebook_per_chapter():
    if not SITE.is_dir():
        pytest.fail("no built site in _build/html; run jupyter-book build . first")
    assert sorted(site_notebooks()) == sorted(p.stem for p in chapters())


@pytest.mark.site
@pytest.mark.parametrize("md", chapters(), ids=lambda p: p.stem)
def test_site_notebook_is_valid_and_offered_for_download(md):
    path = site_notebooks()[md.stem]
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb_code_cells(nb) == md_code_cells(md)
    html = (SITE / "book" / f"{md.stem}.html").read_text(encoding="utf-8")
    assert re.search(rf'<a href="[^"]*_sources/book/{md.stem}\.ipynb" download', html), "no .ipynb download link"
    assert re.search(rf'<a href="[^"]*_sources/book/{md.stem}\.md" download', html), "no .md download link"


@pytest.mark.site
@pytest.mark.slow
def test_downloaded_ou_notebook_executes(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(site_notebooks()["ou"], as_version=4)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("SCORETUT_SCALE", "fast")
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute()  # raises CellExecutionError on any failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert not any(o.get("output_type") == "error" for o in outputs)
