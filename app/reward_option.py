"""``--reward``: shared by the commands that run a loop and the benches that start them."""

from __future__ import annotations

import argparse


def add_reward_argument(parser: argparse.ArgumentParser) -> None:
    """``--reward MODE``: which reward drives the closed loop (default: the protocol's)."""
    from experiment_protocols.rewards import modes_without_files, settings_class

    modes = modes_without_files()
    parser.add_argument(
        "--reward",
        choices=modes,
        default=None,
        help="reward of the loop: "
        + "; ".join(f"{m} ({settings_class(m).description})" for m in modes)
        + "; default: the protocol's (eegs pilot: pilot.toml's)",
    )
