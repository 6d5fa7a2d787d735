"""Every relative link in the README, docs/ and benchmarks/ points at a file that exists, and
every `#anchor` at a heading of that file (GitHub's heading slugs), so moving or renaming a
page or a section cannot leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "benchmarks").glob("*.md")]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def _prose(path: Path) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(path):
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_relative_links_and_anchors_resolve() -> None:
    assert PAGES
    dead = []
    for page in PAGES:
        for line in _prose(page):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                    continue
                file_part, _, anchor = target.partition("#")
                dest = (page.parent / file_part).resolve() if file_part else page
                if not dest.exists():
                    dead.append(f"{page.relative_to(REPO)}: {target} (no such file)")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    dead.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not dead, "\n".join(dead)


# Work-journal words, spelled in pieces so that this file does not match a search for them.
_RUN = "ses" + "sions?"
JOURNAL = re.compile(
    rf"\bissues? #?\d+|\bissue-\d+|\b(first|second|third|fourth|fifth|sixth|seventh) {_RUN}\b", re.I
)
PROSE_RUN = re.compile(rf"\b{_RUN}\b", re.I)
PROCESS_MEANING = "ses" + "sion of its own"  # a process group leader: the one meaning docs may use


def test_docs_and_code_carry_no_work_journal() -> None:
    """Docs say what the product does and what was measured; history lives in git log. So no
    issue numbers anywhere, and in the docs the word for a work period only as a process's."""
    found = []
    sources = [*PAGES]
    for folder in ("megatron_tf", "tests", "scripts"):
        sources += sorted((REPO / folder).rglob("*.py"))
    for path in sources:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            prose_hit = path.suffix == ".md" and PROSE_RUN.search(line)
            if JOURNAL.search(line) or (prose_hit and PROCESS_MEANING not in line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
