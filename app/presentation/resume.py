"""Where an interrupted session's presentation stopped, read back from its events.

``eegs present --resume`` skips the blocks that ended, starts each unfinished block at
its first round with images left to show, and shows only that round's images that
never went on screen: a folder round is drawn again with the same seed, a generated
round's images are read back from ``SESSION/images/``. An image counts as shown once
its ``stimulus_offset`` marker went out (it was on screen for its whole duration), so
no image is shown twice; one cut short by the crash is shown again (its epoch stays
in the session, marked by the ``abort`` event that names its trial).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.presentation.images import ImageRef
from workers.session_store import SessionStore, read_sidecar


@dataclass
class BlockProgress:
    """What one block of the protocol has shown so far."""

    ended: bool = False
    shown: dict[int, list[str]] = field(default_factory=dict)  # round -> image paths
    trials: dict[int, list[int]] = field(default_factory=dict)  # round -> trial ids

    def start_round(self, n_trials: int) -> int:
        """The first round that has images left to show."""
        r = 0
        while len(self.shown.get(r, [])) >= n_trials:
            r += 1
        return r


def read_progress(store: SessionStore) -> dict[str, BlockProgress]:
    """Every block's progress, by block label, from the markers the session sent."""
    out: dict[str, BlockProgress] = {}
    onsets: dict[int, str] = {}  # trial -> image
    for e in store.events():
        if e["event"] != "marker_sent":
            continue
        m = e.get("marker", {})
        if "block" not in m:
            continue
        prog = out.setdefault(m["block"], BlockProgress())
        if m["event"] == "block_end":
            prog.ended = True
        elif m["event"] == "stimulus_onset" and not m.get("stand_in"):
            onsets[m["trial"]] = str(m.get("image"))
        elif m["event"] == "stimulus_offset" and m.get("trial") in onsets:
            r = int(m.get("round", 0))
            prog.shown.setdefault(r, []).append(onsets[m["trial"]])
            prog.trials.setdefault(r, []).append(int(m["trial"]))
    return out


def saved_round_images(folder: Path, round_: int) -> list[ImageRef]:
    """Images the worker sent for a round, as stored by the presentation, in order."""
    refs = []
    for sidecar in sorted(folder.glob("*.json")):
        meta = read_sidecar(sidecar)
        png = sidecar.with_suffix(".png")
        if meta is not None and meta.get("round") == round_ and png.exists():
            refs.append(ImageRef(png, meta.get("label"), round_, meta.get("provenance") or {}))
    return refs
