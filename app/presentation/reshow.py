"""Which images of a block to show again: those whose trial lost its epoch.

A trial loses its epoch when the acquisition was restarted while it was shown (the
supervisor flags it ``trial_lost``, :mod:`app.restarts`), when the EEG had a gap in
its window (the acquisition logs ``epoch_lost``), or when its marker never reached the
acquisition (a marker stream that restarted: no ``epoch`` at all). The presentation
reads these from ``events.jsonl`` at the end of a generator block
(``presentation.reshow_lost_trials``).
"""

from __future__ import annotations

import time
from pathlib import Path

from app.presentation.images import ImageRef
from workers.session_store import EVENTS_FILE, read_events

#: A trial logged this long ago without an epoch has lost it (its marker never reached
#: the acquisition); a younger one may still get its epoch.
SETTLE_S = 2.5


def lost_images(session: Path, block: str, done: set[int]) -> dict[int, list[tuple[int, ImageRef]]]:
    """Per round, (trial id, image) of the block's trials without an epoch, not in ``done``."""
    events = list(read_events(Path(session) / EVENTS_FILE))
    lost = {e["trial_id"] for e in events if e["event"] == "epoch_lost" and "trial_id" in e}
    lost |= {e["trial"] for e in events if e["event"] == "trial_lost" and e.get("lost") == "epoch"}
    if any(e["event"] == "acquisition_ready" for e in events):  # epochs are being cut
        with_epoch = {e["trial_id"] for e in events if e["event"] == "epoch"}
        settled = time.time() - SETTLE_S
        lost |= {
            e["trial"]
            for e in events
            if e["event"] == "trial" and e["t_wall"] < settled and e["trial"] not in with_epoch
        }
    reshown = {t for e in events if e["event"] == "trials_reshown" for t in e.get("trials", [])}
    out: dict[int, list[tuple[int, ImageRef]]] = {}
    for e in events:
        tid = e.get("trial")
        if e["event"] != "trial" or e.get("block") != block or tid not in lost:
            continue
        if tid in done or tid in reshown or e.get("stand_in") or not Path(e["image"]).is_file():
            continue
        ref = ImageRef(Path(e["image"]), e.get("label"), int(e["round"]))
        out.setdefault(int(e["round"]), []).append((tid, ref))
    return out
