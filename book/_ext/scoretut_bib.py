"""Author–year labels for the bibliography (set up by ``scoretut_site``).

Chapters cite with ``{cite}``, which ``bibtex_reference_style: author_year`` renders as
"[Song et al., 2021]". pybtex's stock styles label the bibliography entries with numbers
("[32]"), so a reader who follows a citation lands on a label that does not match it. The
``scoretut_authoryear`` style formats entries as pybtex's ``plain`` style does, sorted by
author and year, but labels each one as the citation reads: "Ho et al., 2020",
"Song and Ermon, 2019", "Hyvärinen, 2005"; two entries that would share a label get
"2021a", "2021b".
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from pybtex.plugin import register_plugin
from pybtex.richtext import Text
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle

STYLE = "scoretut_authoryear"


def _last_name(person: Any) -> str:
    text = " ".join(person.prelast_names + person.last_names)
    return str(Text.from_latex(text)) if "{" in text or "\\" in text else text


def author_year(entry: Any) -> str:
    """``"Last, YEAR"``, ``"Last and Other, YEAR"`` or ``"Last et al., YEAR"``."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [_last_name(p) for p in people]
    if not names:
        who = entry.fields.get("organization", entry.key)
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    return f"{who}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabels(BaseLabelStyle):
    """Label style: :func:`author_year`, with a/b/... on repeated labels."""

    def format_labels(self, sorted_entries: Iterable[Any]) -> Iterator[str]:
        entries = list(sorted_entries)
        labels = [author_year(e) for e in entries]
        counts = Counter(labels)
        seen: defaultdict[str, int] = defaultdict(int)
        for label in labels:
            if counts[label] > 1:
                suffix = "abcdefghijklmnopqrstuvwxyz"[seen[label]]
                seen[label] += 1
                yield label + suffix
            else:
                yield label


class AuthorYearStyle(PlainStyle):
    """pybtex ``plain`` formatting with :class:`AuthorYearLabels`."""

    default_label_style = STYLE
    default_sorting_style = "author_year_title"


def register() -> None:
    """Make ``bibtex_default_style: scoretut_authoryear`` available (idempotent)."""
    for group, cls in (("pybtex.style.labels", AuthorYearLabels),
                       ("pybtex.style.formatting", AuthorYearStyle)):
        try:
            register_plugin(group, STYLE, cls)
        except Exception:  # already registered by an earlier build in this process
            pass
