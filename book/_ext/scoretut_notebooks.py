"""Chapters as plain Jupyter notebooks: the ``.ipynb`` each page offers for download.

:func:`to_notebook` reads a MyST markdown chapter with jupytext (code cells, their order and
their metadata are jupytext's) and rewrites what only Sphinx understands into Markdown that
reads the same in JupyterLab or VS Code:

- admonitions (``:::{admonition} Run card`` and the like) become block quotes under a bold title;
- sphinx-exercise's ``{exercise}`` becomes a block quote titled "Exercise: <title>", its gated
  ``{solution-start} label`` a bold "Solution" line naming the exercise (the solution's prose
  and code cells follow unfolded), and ``{solution-end}`` is dropped;
- numbered equations ``$$ … $$ (label)`` get ``\\tag{n}`` (n counts the chapter's labels in
  order, as the page numbers them) and ``{eq}`label``` becomes ``(n)``;
- ``{cite}`key``` becomes ``(Author et al. YEAR)`` and ``{cite:t}`key``` ``Author et al. (YEAR)``,
  from ``book/references.bib``;
- ``{glue:text}`name``` becomes ``` `name` ```: a value the chapter's own code computes and
  glues (the notebook shows it in the cell output, not in the text);
- ``{numref}`label``` and other roles keep their text; ``(label)=`` targets are dropped.

A first Markdown cell says how to install and run the notebook. The site extension calls
:func:`write_notebook` for every chapter page (``scoretut_site``); the tests call the same
functions without a build.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import jupytext
import nbformat

INSTALL = """\
**Running this notebook.** It is one chapter of the *scoretut* book and imports the `scoretut`
package. From a clone of the repository, install everything (the pinned torch build, this
package in editable mode, Jupyter) with

```bash
pip install -r requirements.txt
```

then open this file in JupyterLab (or open `book/{name}.md` directly: jupytext reads it as a
notebook). The default settings (`SCORETUT_SCALE=fast`) finish in minutes on a laptop CPU; on a
GPU, start Jupyter with `SCORETUT_SCALE=full` (and `SCORETUT_DEVICE=cuda` or `cuda:N` to choose
the device; the default `auto` takes CUDA when it is visible). Run the cells in order."""

_ADMONITION = re.compile(
    r"^(:{3,}|`{3,})\{(admonition|note|tip|warning|important|caution|seealso|exercise)\}[ \t]*(.*)$"
)
_GATE = re.compile(r"^(:{3,}|`{3,})\{solution-(start|end)\}[ \t]*(\S*)")  # sphinx-exercise gates
_EXERCISE_LABEL = re.compile(r"^(?::{3,}|`{3,})\{exercise\}[ \t]*(.*)\n:label:[ \t]*(\S+)", re.M)
_EQ_LABEL = re.compile(r"^([>\s]*)\$\$\s*\(([\w:-]+)\)\s*$")
_ROLE = re.compile(r"\{([a-z]+(?::[a-z]+)?)\}`([^`]*)`")
_TARGET = re.compile(r"^\(([\w:-]+)\)=\s*$")


@lru_cache(maxsize=4)
def _bibliography(bib: str) -> dict[str, tuple[str, str]]:
    """``key -> (authors as cited, year)`` from a BibTeX file (pybtex, which sphinxcontrib-bibtex uses)."""
    from pybtex.database import parse_file

    out = {}
    for key, entry in parse_file(bib).entries.items():
        people = [p.last_names[0].replace("{", "").replace("}", "") for p in entry.persons.get("author", [])]
        if len(people) > 2:
            who = f"{people[0]} et al."
        elif len(people) == 2:
            who = f"{people[0]} and {people[1]}"
        else:
            who = people[0] if people else key
        out[key] = (who, entry.fields.get("year", "n.d."))
    return out


def _cite(role: str, keys: str, bib: dict[str, tuple[str, str]]) -> str:
    refs = [bib.get(k.strip(), (k.strip(), "")) for k in keys.split(",")]
    if role == "cite:t":
        return "; ".join(f"{who} ({year})" for who, year in refs)
    return "(" + "; ".join(f"{who} {year}".strip() for who, year in refs) + ")"


def _admonitions(lines: list[str], exercises: dict[str, str]) -> list[str]:
    """Rewrite admonition and exercise blocks as block quotes with a bold title (options like
    ``:class:`` dropped), and sphinx-exercise's solution gates as a bold "Solution" line."""
    out: list[str] = []
    fence = gate = None
    for line in lines:
        if gate is not None:  # inside a solution-start/-end directive: options only
            gate = None if line.strip() == gate else gate
            continue
        m = _GATE.match(line) if fence is None else None
        if m:
            gate, kind, label = m.groups()
            if kind == "start":
                title = exercises.get(label, "")
                out.append(f"**Solution ({title})**" if title else "**Solution**")
            continue
        m = _ADMONITION.match(line) if fence is None else None
        if m:
            fence = m.group(1)
            title = m.group(3).strip() or m.group(2).capitalize()
            if m.group(2) == "exercise":
                title = f"Exercise: {title}" if m.group(3).strip() else "Exercise"
            out += [f"> **{title}**", ">"]
            continue
        if fence is not None:
            if line.strip() == fence:
                fence = None
                continue
            if re.match(r"^:[\w-]+:", line) or (not line.strip() and out[-1] == ">"):
                continue  # a directive option, or the blank line after the options
            out.append(f"> {line}".rstrip())
            continue
        out.append(line)
    return out


def _markdown(
    text: str, numbers: dict[str, int], bib: dict[str, tuple[str, str]], exercises: dict[str, str] | None = None
) -> str:
    lines = []
    for line in _admonitions(text.splitlines(), exercises or {}):
        if _TARGET.match(line):
            continue
        m = _EQ_LABEL.match(line)
        if m:  # the closing $$ (label) of a numbered equation
            prefix, label = m.groups()
            lines += [f"{prefix}\\tag{{{numbers[label]}}}", f"{prefix}$$"]
            continue
        lines.append(line)

    def role(m: re.Match) -> str:
        name, body = m.groups()
        if name.startswith("cite"):
            return _cite(name, body, bib)
        if name == "eq":
            return f"({numbers.get(body, body)})"
        if name.startswith("glue"):
            return f"`{body}`"
        target = re.match(r"^(.*?)\s*<[^>]+>$", body)  # {ref}`text <label>` keeps its text
        return target.group(1) if target else body

    return _ROLE.sub(role, "\n".join(lines))


def to_notebook(md: str | Path, bib: str | Path | None = None) -> nbformat.NotebookNode:
    """The chapter ``md`` (MyST markdown notebook) as an nbformat v4 notebook for plain Jupyter."""
    md = Path(md)
    bib = Path(bib) if bib is not None else md.parent / "references.bib"
    refs = _bibliography(str(bib)) if bib.is_file() else {}
    nb = jupytext.read(md, fmt="md:myst")
    labels = [m.group(2) for m in map(_EQ_LABEL.match, md.read_text().splitlines()) if m]
    numbers = {label: i for i, label in enumerate(labels, 1)}
    exercises = {label: title.strip() for title, label in _EXERCISE_LABEL.findall(md.read_text())}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _markdown(cell.source, numbers, refs, exercises)
    # a cell that held only a {solution-end} gate is empty now
    nb.cells = [c for c in nb.cells if c.cell_type != "markdown" or c.source.strip()]
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(INSTALL.format(name=md.stem)))
    nb.metadata.pop("jupytext", None)  # a plain .ipynb, not paired with the .md
    nb.metadata.setdefault("language_info", {"name": "python"})
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{md.stem}-{i}"  # stable ids: the same chapter gives the same file
    nbformat.validate(nb)
    return nb


def is_notebook(md: str | Path) -> bool:
    """True for a MyST markdown notebook (front matter with a ``jupytext:`` block)."""
    text = Path(md).read_text()
    return text.startswith("---") and "\njupytext:" in text.split("\n---", 1)[0]


def write_notebook(md: str | Path, out: str | Path, bib: str | Path | None = None) -> Path:
    """Convert ``md`` with :func:`to_notebook` and write it to ``out``; return ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(to_notebook(md, bib), out)
    return out
