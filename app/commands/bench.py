"""Benchmarks that measure the figures the issues ask for; each prints JSON.

Run them on an otherwise idle machine; each states what it measured and how.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

NAME = "bench"
HELP = "run a benchmark and print its figures as JSON"


def _benchmarks() -> dict[str, str]:
    """Benchmark name -> module: every public module of :mod:`app.bench`.

    A module ``app/bench/brain_model.py`` is run as ``eegs bench brain-model``; it
    defines ``add_arguments(parser)`` and ``run(args) -> dict``.
    """
    import app.bench

    return {
        m.name.replace("_", "-"): f"app.bench.{m.name}"
        for m in pkgutil.iter_modules(app.bench.__path__)
        if not m.name.startswith("_")
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One sub-parser per benchmark."""
    sub = p.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, module in _benchmarks().items():
        mod = importlib.import_module(module)
        bp = sub.add_parser(name, help=mod.__doc__.splitlines()[0], description=mod.__doc__)
        mod.add_arguments(bp)
        bp.add_argument("--out", default=None, metavar="FILE", help="also write the JSON here")
        bp.add_argument(
            "--json", action="store_true", help="print the figures as JSON, last (always on)"
        )
        bp.set_defaults(_bench=mod.run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark and print its JSON."""
    result = args._bench(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    sys.stdout.flush()
    return 0
