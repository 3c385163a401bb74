"""Which pieces of work have run past their deadline: pure bookkeeping, the clock given.

A supervised worker gives each thing it waits for a deadline (a frame in a worker: the frame
timeout; an interrupted job: the interrupt's grace) and asks, when its timer fires, which are
overdue; what is overdue is the worker's to kill (workers/supervisor.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Deadlines:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._due: dict[Hashable, float] = {}

    def set(self, key: Hashable, after_s: float) -> None:
        """`key` must be done within `after_s` from now (an earlier deadline for it stands)."""
        due = self.clock() + after_s
        self._due[key] = min(due, self._due.get(key, due))

    def clear(self, key: Hashable) -> None:
        self._due.pop(key, None)

    def clear_all(self) -> None:
        self._due.clear()

    def overdue(self) -> list[Hashable]:
        """The keys past their deadline, oldest first; each is forgotten as it is reported."""
        now = self.clock()
        late = sorted((due, i, key) for i, (key, due) in enumerate(self._due.items()) if due <= now)
        for _, _, key in late:
            del self._due[key]
        return [key for _, _, key in late]

    def next_in(self) -> float | None:
        """Seconds until the next deadline (0 when one has passed); None when there is none."""
        if not self._due:
            return None
        return max(0.0, min(self._due.values()) - self.clock())

    def __contains__(self, key: Hashable) -> bool:
        return key in self._due
