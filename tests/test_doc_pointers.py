"""Every pointer into the documentation resolves, and nothing points outside the repository.

One convention everywhere: `docs/<page>.md#<anchor>` (or `README.md#...`, `DEVELOPERS.md#...`), the anchor being
GitHub's slug of a heading of that page; in Markdown, relative links `[text](page.md#anchor)` and `(#anchor)`.
Code comments, docstrings, help texts, configs, scripts, tests and pages are read as text; the help of every
subcommand is also rendered and read.
"""

from __future__ import annotations

import argparse
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt"}
SOURCE_DIRS = ("tokentrim", "tokentrim_core", "tests", "scripts", "docs", "examples", ".ci")
SOURCE_FILES = ("README.md", "DEVELOPERS.md", "Makefile", "pyproject.toml")

# Pointers into pages of the repository, wherever they appear: `docs/x.md`, `docs/x.md#anchor`, `README.md#anchor`.
POINTER = re.compile(r"(?<![\w/.-])((?:docs/[\w./-]*|README|DEVELOPERS)\.md)(?:#([\w-]+))?")
# A Markdown link or image target: `](target)`.
LINK = re.compile(r"\]\(([^)\s]+)\)")
# The other conventions, replaced by the one above: a page followed by a quoted heading or a section sign.
OLD_STYLE = re.compile(r"\b[\w-]+\.md\)?(?:,? \(?[\"'“][A-Z]|,? \u00a7| section \d)")
# Files outside the repository that pages and comments once cited; the section sign of their numbering.
OUTSIDE = [
    "../" + "shared",
    "/work" + "/",
    "shared/" + "reference",
    "reference" + "-pipelines",
    "more" + "-pipelines",
    "tokentrim" + "-paper.md",
    "ecosystem" + ".md",
    "STYLE" + ".md",
    "\u00a7",
]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link targets dropped, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """The anchors of a Markdown page's headings (outside code fences; repeated headings get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = re.match(r"#{1,6} +(.+?) *#* *$", line)
        if match and not fenced:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(f"{base}-{n}" if n else base)
    return frozenset(out)


def sources() -> list[Path]:
    files = [ROOT / name for name in SOURCE_FILES if (ROOT / name).is_file()]
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def problem(target: Path, anchor: str | None) -> str | None:
    """Why a pointer does not resolve, or None."""
    target = target.resolve()
    if not target.is_relative_to(ROOT):
        return "points outside the repository"
    if not target.exists():
        return "no such file"
    if anchor and (target.suffix != ".md" or anchor not in anchors(target)):
        return f"no heading with the anchor #{anchor}"
    return None


def pointer_problems(text: str, where: Path) -> list[str]:
    """Problems of the pointers in `text`, a file's content (or a help text when `where` is the root)."""
    found = []
    for m in POINTER.finditer(text):
        why = problem(ROOT / m.group(1), m.group(2))
        if why:
            found.append(f"{m.group(0)}: {why}")
    if where.suffix == ".md":
        prose = re.sub(r"```.*?```|`[^`\n]*`", "", text, flags=re.S)  # links in code are not links
        for m in LINK.finditer(prose):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            why = problem(where.parent / path if path else where, anchor or None)
            if why:
                found.append(f"]({target}): {why}")
    found += [f"{m.group(0)!r}: name the heading by its anchor" for m in OLD_STYLE.finditer(text)]
    return found


def test_slug_is_githubs():
    assert slug("4.2 The cost model") == "42-the-cost-model"
    assert slug("Key mapping: Wan's `x.pth` → transformers") == "key-mapping-wans-xpth--transformers"
    assert slug("The world (`tokentrim/toy/world.py`)") == "the-world-tokentrimtoyworldpy"
    assert slug("A [link](x.md) heading") == "a-link-heading"


def test_checker_rejects_bad_pointers(tmp_path):
    """The checks can fail: a missing page, a missing heading, an old-style pointer, a link out of the repo."""
    page = tmp_path / "p.md"
    text = (
        "docs/nope.md and docs/spec.md#no-such-heading and docs/spec.md, 'RoPE' and [x](../../../etc/passwd) "
        "and [y](#not-here) and `[code](not-a-link.md)`"
    )
    found = pointer_problems(text, page)
    assert any("docs/nope.md" in f and "no such file" in f for f in found)
    assert any("#no-such-heading" in f for f in found)
    assert any("name the heading" in f for f in found)
    assert any("outside the repository" in f for f in found)
    assert any("#not-here" in f for f in found)
    assert not any("not-a-link" in f for f in found)
    assert (
        pointer_problems(
            "docs/spec.md#rope, docs/spec.md, [z](docs/spec.md#self-forcing-cache)", ROOT / "x.md"
        )
        == []
    )


def test_every_pointer_in_the_repository_resolves():
    found = []
    for path in sources():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}: {p}" for p in pointer_problems(text, path)]
    assert not found, "\n".join(found)


def test_nothing_points_outside_the_repository():
    found = []
    for path in sources():
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {bad!r}" for bad in OUTSIDE if bad in line]
    assert not found, "\n".join(found)


def subcommand_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) for the parser and every subcommand, nested ones included."""
    yield prefix or parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommand_parsers(sub, f"{prefix} {name}".strip())


@pytest.mark.parametrize("columns", ["60", "80", "200"])
def test_help_pointers_resolve(columns, monkeypatch):
    """The rendered help of every subcommand, at several terminal widths: pointers resolve and none is broken
    across lines."""
    monkeypatch.setenv("COLUMNS", columns)
    from tokentrim.app.cli import build_parser

    found, seen = [], 0
    for name, parser in subcommand_parsers(build_parser()):
        text = parser.format_help()
        seen += len(POINTER.findall(text))
        found += [f"{name} --help: {p}" for p in pointer_problems(text, ROOT)]
        found += [f"{name} --help: {line.strip()!r} breaks a pointer" for line in text.splitlines()
                  if re.search(r"(docs/[\w-]*|\.md#[\w-]*-)$", line.rstrip())]  # fmt: skip
    assert seen >= 3, "the help texts point into docs/"
    assert not found, "\n".join(found)


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
def test_pages_have_headings(page):
    assert anchors(ROOT / "docs" / page), f"docs/{page} has no headings to point to"
