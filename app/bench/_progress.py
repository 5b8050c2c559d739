"""One progress line per finished unit of a long benchmark, on stderr (stdout is the JSON)."""

from __future__ import annotations

import sys
import time


def report(bench: str, done: int, total: int, what: str, t0: float) -> None:
    """``[bench NAME] done/total what; elapsed, and the time left at this pace``."""
    el = time.perf_counter() - t0
    left = el / done * (total - done)
    print(
        f"[bench {bench}] {done}/{total} {what}; elapsed {el / 60:.1f} min, "
        f"left ~{left / 60:.1f} min",
        file=sys.stderr,
        flush=True,
    )
