"""Show the protocol's blocks to the participant (PsychoPy), with markers on every flip.

Runs instructions, then each block of the protocol's [presentation] section:
fixation, stimulus, optional valence/arousal ratings and a blank inter-trial
interval, with rest breaks. Every stimulus onset/offset, rating and block boundary
is a JSON marker on the LSL stream `streams.markers`, stamped at the flip that shows
it. Images come from folders (--images replaces every block's source) or from the
generation worker over ZeroMQ. Keys: pause, resume and abort (protocol
`presentation.keys`); SIGTERM/Ctrl-C also aborts cleanly. Frame timing and every
trial go to SESSION/events.jsonl and SESSION/presentation-frames.npz.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from app.commands._common import add_protocol_argument, protocol_from_args

NAME = "present"
HELP = "run the protocol's trials on the participant's screen (PsychoPy)"
POLLS_STOP = True  # SIGTERM/Ctrl-C: stop cleanly (app.shutdown)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the options."""
    add_protocol_argument(p)
    p.add_argument("--session", type=Path, required=True, metavar="DIR", help="session directory")
    p.add_argument("--windowed", action="store_true", help="a window instead of full screen")
    p.add_argument(
        "--images", type=Path, metavar="DIR", help="show images from this folder in every block"
    )
    p.add_argument("--markers", metavar="NAME", help="marker stream name (streams.markers)")
    p.add_argument(
        "--headless",
        action="store_true",
        help="draw on a virtual display (Xvfb, no vsync: frames are paced in software)",
    )
    p.add_argument(
        "--wait-recording",
        type=float,
        default=0.0,
        metavar="S",
        help="before the first trial, wait up to S s for the session's XDF recording",
    )
    p.add_argument(
        "--control",
        metavar="ENDPOINT",
        help="take pause/resume/abort from the dashboard on this loopback ZeroMQ endpoint",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the session's blocks where they stopped (images not shown yet)",
    )


def headless_overrides(protocol) -> dict:
    """Protocol changes for a virtual display, where nobody sees the screen or types.

    Frames are paced in software (Xvfb has no vsync), the refresh rate is not measured,
    the window is not full screen, text screens end on their timer and ratings that
    would wait forever time out after ``text_min_s`` (or 1 s).
    """
    pres = protocol.presentation
    screen = pres.screen.model_dump()
    screen.update(pace_frames=True, check_refresh=False, fullscreen=False)
    ratings = pres.ratings.model_dump()
    if not ratings["timeout_s"]:
        ratings["timeout_s"] = pres.text_min_s or 1.0
    return {
        "presentation.screen": screen,
        "presentation.ratings": ratings,
        "presentation.wait_for_key": False,
    }


def run(args: argparse.Namespace) -> int:
    """Open the window and run the session; exit status 0 when completed or aborted."""
    from app.presentation.display import require_display, virtual_display
    from app.presentation.runner import PresentConfig, resolve_blocks
    from app.presentation.runner import run as run_presentation
    from app.shutdown import STOP
    from workers.priority import set_niceness

    protocol = protocol_from_args(args, {"streams.markers": args.markers})
    if args.headless:
        protocol = protocol.with_overrides(headless_overrides(protocol))
    resolve_blocks(protocol, args.images)  # bad folders fail before any window opens
    require_display(args.headless)
    # first, before any thread and the headless display server (a child): they inherit it
    set_niceness(protocol.priority.presentation, "presentation")
    w, h = protocol.presentation.screen.size_px
    display = virtual_display(w, h) if args.headless else contextlib.nullcontext()
    with display:
        result = run_presentation(
            PresentConfig(
                protocol=protocol,
                session_dir=args.session,
                images_dir=args.images,
                windowed=args.windowed or args.headless,
                stop=STOP,
                wait_recording_s=args.wait_recording,
                resume=args.resume,
                control=args.control,
            )
        )
    cpu = result.get("own_cpu_ms", {})
    print(
        f"presentation {result['status']}: {result.get('n_trials', 0)} trials, "
        f"{result.get('dropped_frames', 0)} dropped frames of {result.get('n_frames', 0)}, "
        f"own CPU per frame median {cpu.get('median')} ms, max {cpu.get('max')} ms "
        f"-> {args.session}"
    )
    return 0
