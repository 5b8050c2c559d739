"""The ``eegs`` command line: one entry point, one module per subcommand.

Each public module in :mod:`app.commands` (found by listing the package, so adding a
subcommand touches no other file) declares ``NAME``, ``HELP``, ``add_arguments`` and
``run``; heavy imports happen inside ``run`` so that ``eegs --help`` stays instant.
Input errors (a bad protocol, a missing stream or channel) exit with status 2 and a
message that names what is wrong.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from pathlib import Path

from app import shutdown
from app.errors import UsageError
from app.supervisor import LOG_DIR, ProcessCrashed


def _command_modules() -> list[str]:
    """Every module of :mod:`app.commands` that defines a subcommand, by file name."""
    import app.commands

    return sorted(
        m.name for m in pkgutil.iter_modules(app.commands.__path__) if not m.name.startswith("_")
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the tests)."""
    parser = argparse.ArgumentParser(
        prog="eegs",
        description="EEGS: closed-loop EEG-guided affective image dataset construction.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _command_modules():
        mod = importlib.import_module(f"app.commands.{name}")
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _polls_stop=getattr(mod, "POLLS_STOP", False))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status."""
    args = build_parser().parse_args(argv)
    # liblsl logs every connection at INFO level on stderr; a lab's own LSLAPICFG wins.
    os.environ.setdefault("LSLAPICFG", str(Path(__file__).parents[1] / "workers" / "lsl_api.cfg"))
    logging.getLogger("eegs").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    shutdown.install(polls_stop=args._polls_stop)
    try:
        return int(args._run(args) or 0)
    except UsageError as err:
        print(f"eegs {args.command}: error: {err}", file=sys.stderr)
        return 2
    except ProcessCrashed as err:
        print(
            f"eegs {args.command}: {err}\nThe session is marked crashed; everything recorded "
            f"is kept (logs in {err.session / LOG_DIR}). Continue it with:\n"
            f"  eegs resume {err.session}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
