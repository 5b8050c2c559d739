"""Session log writes from a thread, so the frame loop never waits for ``fsync``."""

from __future__ import annotations

import queue
import threading
from typing import Any

from workers.session_store import SessionStore


class EventWriter:
    """Queues ``store.log(event, **fields)`` calls and performs them in order in a thread."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[tuple[str, dict[str, Any]] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._thread.start()

    def __call__(self, event: str, **fields: Any) -> None:
        """Queue one event line (returns at once)."""
        self._queue.put((event, fields))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.store.log(item[0], **item[1])
            except (OSError, ValueError, TypeError) as err:  # keep the session going
                self._error = err

    def close(self) -> None:
        """Write every queued line, then stop; re-raise a write error."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
