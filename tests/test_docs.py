"""Every relative link in the README and docs/ points to a file that exists, and every anchor to
a heading of that file, so a reader following the docs never lands on nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "policies" / "README.md", *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _prose(text: str) -> str:
    """The text with code blocks and code spans removed: links inside them are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated heading numbered from -1."""
    seen: dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        plain = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", plain).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    links = _LINK.findall(_prose(page.read_text(encoding="utf-8")))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


def test_anchor_rule_matches_github() -> None:
    text = "# Memory: what it is\n## Lessons (the second memory)\n## `q_min` and Q\n## Lessons\n"
    assert anchors(text + "## Lessons\n") == {
        "memory-what-it-is",
        "lessons-the-second-memory",
        "q_min-and-q",
        "lessons",
        "lessons-1",
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(ROOT)}")
        elif (
            anchor
            and target.suffix == ".md"
            and anchor not in anchors(target.read_text(encoding="utf-8"))
        ):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


_DOC_REFERENCE = re.compile(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?")


def test_code_points_to_docs_that_exist() -> None:
    """Comments and docstrings that send a reader to docs/ name a page and heading that exist,
    and none sends them to a design file outside the repository."""
    broken = []
    for folder in ("proxy", "storage", "bench"):
        for source in sorted((ROOT / folder).rglob("*.py")):
            where = source.relative_to(ROOT)
            if any(part.startswith(".venv") for part in where.parts):
                continue  # a benchmark's own environment (`make bench-env`), not our code
            text = source.read_text(encoding="utf-8")
            if "MEMORY-DESIGN" in text:
                broken.append(f"{where}: MEMORY-DESIGN.md is not in the repository")
            for page, anchor in _DOC_REFERENCE.findall(text):
                target = ROOT / "docs" / page
                if not target.exists():
                    broken.append(f"{where}: no page docs/{page}")
                elif anchor and anchor not in anchors(target.read_text(encoding="utf-8")):
                    broken.append(f"{where}: no heading #{anchor} in docs/{page}")
    assert not broken, "\n".join(broken)
