"""The README and the pages of docs/: every relative link points to a file of the repository (and, with a
``#fragment``, to a heading of that page), and the README links every page of docs/."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: An inline link or image, ``[text](target)`` or ``[text](target "title")``; the text holds no ``]``.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def prose_lines(text: str, blank_code: bool = True) -> list[tuple[int, str]]:
    """The (line number, line) pairs outside fenced code blocks, with code spans blanked out unless told."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, CODE_SPAN.sub("``", line) if blank_code else line))
    return out


def links(page: Path) -> list[tuple[int, str]]:
    """Every link target of ``page`` outside code, with its line number."""
    return [(n, m.group(1)) for n, line in prose_lines(page.read_text(encoding="utf-8")) for m in LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped (but ``-`` and ``_``), spaces as ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of ``page``'s headings; a repeated heading's anchors get ``-1``, ``-2``... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8"), blank_code=False):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        found.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def is_relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("//")


def test_links_are_read_from_prose_only(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n[a](a.md) and ![b](img/b.png \"title\"), `[not](code.md)`\n```\n[nor](fenced.md)\n```\n"
                    "[c](https://example.org/c) [d](#a-page)\n", encoding="utf-8")
    assert links(page) == [(2, "a.md"), (2, "img/b.png"), (6, "https://example.org/c"), (6, "#a-page")]
    assert anchors(page) == {"a-page"}
    assert (REPO / "README.md").is_file() and len(PAGES) > 1, "README.md and docs/*.md expected"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if not is_relative(target):
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(REPO)}:{number}: {target}"
        if REPO not in resolved.parents and resolved != REPO:
            broken.append(f"{where} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{where} (no heading with that anchor in {resolved.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {(REPO / t.partition("#")[0]).resolve() for _, t in links(REPO / "README.md") if is_relative(t)}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{missing}"


@pytest.mark.parametrize("heading, anchor", [
    ("The studies' wall times", "the-studies-wall-times"),
    ("The corruption study (an AMD EPYC with AVX-512, 2 cores)", "the-corruption-study-an-amd-epyc-with-avx-512-2-cores"),
    ("Add a `RunConfig` field", "add-a-runconfig-field"),
    ("Mapping your own stack: `python -m utae predict`", "mapping-your-own-stack-python--m-utae-predict"),
])
def test_anchors_follow_githubs_rule(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
