"""The design travels with the code: docs/architecture.md is the one design document.

Docstrings and protocol comments cite it as ``docs/architecture.md section N``; these
tests keep those citations, and the commands the document names, true.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
# The plan written before the code, kept outside the repository. Spelled in two parts so
# that this file does not mention it.
OUT_OF_REPO_DOC = "ARCHITECTURE" + ".md"
# Not the repository's files: environments, caches, session outputs (see .gitignore).
SKIP_DIRS = {".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", "sessions", "runs"}
SKIP_TOP_DIRS = {"docs", ".whl", ".gl", "shared"}
MAX_BYTES = 8 << 20
SECTION_REF = re.compile(r"docs/architecture\.md[,:]?[\s#*]*(?:section|§)\s*(\d+)", re.I)
HEADING = re.compile(r"^## (\d+)\. (\S.*)$", re.M)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
COMMAND = re.compile(r"\beegs[ \t]+([a-z][a-z0-9-]*)(?:[ \t]+([a-z][a-z0-9-]*)\b(?![./:]))?")


def _repo_files() -> list[Path]:
    """Every file of the working tree outside docs/, environments and caches."""
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        top = Path(dirpath) == ROOT
        dirnames[:] = [
            d
            for d in dirnames
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not (top and d in SKIP_TOP_DIRS)
        ]
        files.extend(Path(dirpath) / name for name in filenames)
    return sorted(files)


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_BYTES:
            return b""
        return path.read_bytes()
    except OSError:  # a dangling link, a file removed meanwhile
        return b""


def _sections() -> dict[int, str]:
    return {int(m[1]): m[2] for m in HEADING.finditer(DOC.read_text(encoding="utf-8"))}


def _code_spans(text: str) -> list[str]:
    """Fenced blocks and inline code spans of a Markdown text."""
    fenced = FENCE.findall(text)
    inline = re.findall(r"`([^`]+)`", FENCE.sub("", text))
    return fenced + inline


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_no_file_outside_docs_cites_the_out_of_repo_plan():
    needle = OUT_OF_REPO_DOC.encode()
    found = [str(p.relative_to(ROOT)) for p in _repo_files() if needle in _read(p)]
    assert not found, (
        f"{OUT_OF_REPO_DOC} is not in the repository; cite docs/architecture.md (with its "
        f"section number) instead, in: {found}"
    )


def test_doc_sections_are_numbered_one_to_n():
    numbers = [int(m[1]) for m in HEADING.finditer(DOC.read_text(encoding="utf-8"))]
    assert numbers, f"{DOC} has no '## N. Title' headings"
    assert numbers == list(range(1, len(numbers) + 1)), f"section numbers {numbers}"


def test_section_references_name_existing_sections():
    sections = _sections()
    refs = []
    for path in _repo_files():
        text = _read(path).decode("utf-8", errors="replace")
        for m in SECTION_REF.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            refs.append((f"{path.relative_to(ROOT)}:{line}", int(m[1])))
    assert refs, "no 'docs/architecture.md section N' reference found: is the pattern stale?"
    dangling = [(where, n) for where, n in refs if n not in sections]
    assert not dangling, (
        f"references to sections missing from {DOC.name} (it has {sorted(sections)}): {dangling}"
    )


def test_commands_in_doc_code_spans_exist():
    commands = _subparsers(build_parser())
    named, unknown = set(), set()
    for span in _code_spans(DOC.read_text(encoding="utf-8")):
        for m in COMMAND.finditer(span):
            name, sub = m[1], m[2]
            named.add(name)
            if name not in commands:
                unknown.add(f"eegs {name}")
                continue
            choices = _subparsers(commands[name])
            if sub is not None and choices and sub not in choices:
                unknown.add(f"eegs {name} {sub}")
    assert len(named) >= 5, f"only {sorted(named)} found: is the command pattern stale?"
    assert not unknown, f"{DOC.name} names commands that `eegs` lacks: {sorted(unknown)}"
