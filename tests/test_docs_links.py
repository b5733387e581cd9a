"""The README and docs/ stand alone: every file they point to is in the repository.

Checked: Markdown links (``[text](target)``, with their ``#anchor``) and file
paths written in code spans (`` `hub/core/leds.py` ``), which readers follow
just the same. Web addresses are left alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A repository path in a code span: a folder, a slash, a file with one of the
# extensions the docs name (sources, protos, documents, settings).
PATH_IN_CODE = re.compile(r"`((?:[\w.-]+/)+[\w.-]+\.(?:md|py|proto|toml|sh))`")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def prose(document: Path) -> str:
    """The document without its fenced code blocks (commands, transcripts)."""
    return FENCE.sub("", document.read_text())


def anchors(document: Path) -> set[str]:
    """The anchors GitHub gives the document's headings."""
    slugs = set()
    for heading in re.findall(r"^#+\s+(.*)$", prose(document), re.MULTILINE):
        text = re.sub(r"[`*]", "", heading).strip().lower()
        slugs.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return slugs


def broken_references(document: Path, root: Path = ROOT) -> list[str]:
    text = prose(document)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.is_relative_to(root) or not file.exists():
            broken.append(f"link {target}: no such file in the repository")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"link {target}: no heading #{anchor} in {file.name}")
    for path in PATH_IN_CODE.findall(text):
        # Written from the repository's top, or from the document's folder.
        if not any((base / path).exists() for base in (root, document.parent)):
            broken.append(f"`{path}`: no such file in the repository")
    return broken


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_file_a_document_points_to_is_in_the_repository(document: Path) -> None:
    assert broken_references(document) == []


def test_the_check_sees_a_path_outside_the_repository(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    document = docs / "x.md"
    document.write_text(
        "# X\n\nSee `shared/spec/contracts.md`, [y](y.md), [ok](#x) and [no](#nowhere).\n"
    )
    assert broken_references(document, root=tmp_path) == [
        "link y.md: no such file in the repository",
        "link #nowhere: no heading #nowhere in x.md",
        "`shared/spec/contracts.md`: no such file in the repository",
    ]
