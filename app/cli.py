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
from app.supervisor import LOG_DIR, DiskFull, ProcessCrashed
from experiment_protocols.bounded import check_path_text
from workers.errors import DISK_FULL_STATUS, is_disk_full


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
        _check_arguments(args)
        return int(args._run(args) or 0)
    except UsageError as err:
        # a name the user gave may hold what the terminal cannot show: shown escaped
        shown = str(err).encode(errors="backslashreplace").decode()
        print(f"eegs {args.command}: error: {shown}", file=sys.stderr)
        return 2
    except DiskFull as err:
        print(
            f"eegs {args.command}: the session stopped: {err.reason}.\nThe recording, the "
            f"epochs and the events so far are closed and readable; the session is marked "
            f"failed. Continue it on a disk with space with:\n"
            f"  eegs resume {err.session} --to DIR",
            file=sys.stderr,
        )
        return 1
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
    except OSError as err:
        if not is_disk_full(err):
            raise
        _last_words(f"eegs {args.command}: the disk is full: {err}")
        return DISK_FULL_STATUS


def _last_words(text: str) -> None:
    """Say why, where the output may be a log on the very disk that is full.

    Whatever cannot be written is dropped, and so is what is still buffered: Python's
    own flush at exit would otherwise fail and turn the exit status into 120.
    """
    for stream in (sys.stderr, sys.stdout):
        try:
            if stream is sys.stderr:
                stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass
    devnull = open(os.devnull, "w")  # noqa: SIM115 - the process is ending
    sys.stdout = sys.stderr = devnull


def _check_arguments(args: argparse.Namespace) -> None:
    """Every path or text on the command line by the bounded parser's rule (exit 2).

    A NUL cannot be in a file name, and an OS call would raise an error far from here.
    """
    for name, value in vars(args).items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, str | Path):
                check_path_text(item, f"--{name.replace('_', '-')}")


if __name__ == "__main__":
    sys.exit(main())
