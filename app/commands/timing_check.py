"""Measure the display's marker-to-light delay with a photodiode, and the correction.

Flashes the photodiode patch (protocol `presentation.photodiode`: its corner and size;
`presentation.timing_check`: number, length, spacing) with a stimulus_onset marker on
each flash's flip, records the photodiode channel (`presentation.photodiode.channel`)
of the EEG stream `streams.eeg`, and reports the offset from marker to light onset:
mean, SD, min, max, and the correction to add to marker times (the mean). The result
goes into SESSION/events.jsonl and SESSION/session.json. With --source brain-model a
simulated participant with a photodiode channel (given lag and jitter) is started and
stopped here. See hardware.md for the wiring and the procedure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from app.commands._common import add_protocol_argument, protocol_from_args

NAME = "timing-check"
HELP = "photodiode check of the marker-to-light delay (and its correction)"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_protocol_argument(p)
    p.add_argument(
        "--session",
        type=Path,
        metavar="DIR",
        help="session directory (default: sessions/timing-check-DATE-TIME)",
    )
    p.add_argument(
        "--source",
        choices=("amplifier", "brain-model"),
        default="amplifier",
        help="where the photodiode channel comes from (default: the amplifier's stream)",
    )
    p.add_argument("--n-flashes", type=int, metavar="N", help="presentation.timing_check")
    p.add_argument("--eeg", metavar="NAME", help="EEG stream name (streams.eeg)")
    p.add_argument("--markers", metavar="NAME", help="marker stream name (streams.markers)")
    p.add_argument("--lag-ms", type=float, default=20.0, help="brain model: simulated display lag")
    p.add_argument(
        "--jitter-ms", type=float, default=2.0, help="brain model: SD of the simulated lag"
    )
    p.add_argument(
        "--brain-model-sfreq",
        type=float,
        default=1000.0,
        help="brain model: sampling rate of the simulated stream (Hz)",
    )
    p.add_argument("--windowed", action="store_true", help="a window instead of full screen")
    p.add_argument("--headless", action="store_true", help="draw on a virtual display (Xvfb)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    """Run the check; print the offsets and the recommended correction."""
    from app.commands.present import headless_overrides
    from app.presentation.display import require_display, virtual_display
    from app.presentation.timing_check import TimingCheckConfig
    from app.presentation.timing_check import run as run_check
    from app.shutdown import STOP

    protocol = protocol_from_args(args, {"streams.eeg": args.eeg, "streams.markers": args.markers})
    if args.n_flashes is not None:
        tc = protocol.presentation.timing_check.model_dump()
        tc["n_flashes"] = args.n_flashes
        protocol = protocol.with_overrides({"presentation.timing_check": tc})
    if args.headless:
        protocol = protocol.with_overrides(headless_overrides(protocol))
    require_display(args.headless)
    session = args.session or Path("sessions") / time.strftime("timing-check-%Y%m%d-%H%M%S")
    w, h = protocol.presentation.screen.size_px
    with contextlib.ExitStack() as stack:
        if args.headless:
            stack.enter_context(virtual_display(w, h))
        if args.source == "brain-model":
            stack.enter_context(_brain_model(args, protocol, session))
        result = run_check(
            TimingCheckConfig(
                protocol=protocol,
                session_dir=session,
                windowed=args.windowed or args.headless,
                stop=STOP,
            )
        )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "status"}, indent=2))
    elif result["status"] == "completed":
        o = result["offset_ms"]
        print(
            f"marker -> light: mean {o['mean']:.2f} ms, SD {o['sd']:.2f} ms, "
            f"min {o['min']:.2f}, max {o['max']:.2f} ({result['n_detected']}/"
            f"{result['n_flashes']} flashes seen). Recommended correction: add "
            f"{result['correction_ms']:.2f} ms to marker times. -> {session}"
        )
    else:
        print(f"timing check {result['status']} -> {session}")
    return 0


@contextlib.contextmanager
def _brain_model(args: argparse.Namespace, protocol, session: Path):
    """Start ``eegs brain-model`` with a photodiode channel; stop it afterwards.

    Its console output goes to ``SESSION/brain-model.log``.
    """
    import os
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "app.cli", "brain-model"]
    if protocol.source:
        cmd += ["--protocol", protocol.source]
    cmd += [
        "--name",
        protocol.streams.eeg,
        "--markers",
        protocol.streams.markers,
        "--channels",
        "atm17",  # enough EEG for a timing check, light on the CPU
        "--sfreq",
        str(args.brain_model_sfreq),
        "--photodiode",
        "--photodiode-lag-ms",
        str(args.lag_ms),
        "--photodiode-jitter-ms",
        str(args.jitter_ms),
    ]
    session.mkdir(parents=True, exist_ok=True)
    log = (session / "brain-model.log").open("ab")
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()
