"""Every command's --help runs in a fresh interpreter: the install and the imports hold."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from app.cli import build_parser


def _commands() -> list[list[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        out.append([name])
        for action in p._actions:
            if action.dest == "benchmark":  # eegs bench NAME
                out += [[name, bench] for bench in action.choices]
    return out


def test_every_command_has_help_and_a_bench_for_each_module():
    commands = _commands()
    assert ["fetch-weights"] in commands
    assert ["bench", "generation"] in commands
    assert ["bench", "loop"] in commands


@pytest.mark.timeout(300)
def test_help_of_every_command_imports_cleanly():
    """One interpreter per command, as a user runs them: exit 0 and no traceback."""
    for cmd in _commands():
        res = subprocess.run(
            [sys.executable, "-m", "app.cli", *cmd, "--help"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0, (cmd, res.stderr[-2000:])
        assert "usage: eegs" in res.stdout, cmd
        assert "Traceback" not in res.stderr, cmd
