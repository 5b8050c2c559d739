"""Each participant's figures on disk as they come: an hour of a benchmark is never lost.

A population benchmark summarises at the end; a failure after an hour of participants (a
bug in the summary, a killed process) would otherwise lose them all. Beside ``--out``
(``OUT.participants.jsonl``), one JSON line per participant, flushed as it is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any


class KeptParticipants:
    """``with KeptParticipants(args.out) as kept: kept.add(result)``; no file without ``out``."""

    def __init__(self, out: str | Path | None) -> None:
        self.path = Path(out).with_suffix(".participants.jsonl") if out else None
        self._fh = None

    def __enter__(self) -> KeptParticipants:
        if self.path is not None:
            self._fh = self.path.open("w")
        return self

    def add(self, result: dict[str, Any]) -> None:
        """Write one participant's figures (a no-op without ``out``)."""
        if self._fh is not None:
            self._fh.write(json.dumps(result) + "\n")
            self._fh.flush()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fh is not None:
            self._fh.close()
