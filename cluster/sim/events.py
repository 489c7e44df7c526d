"""Virtual clock and event loop: a heap of (time, sequence, callback).

Ties at the same instant run in the order they were scheduled, so a run is a
pure function of its inputs and seed.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Callable


class EventLoop:
    """Runs callbacks in virtual-time order; ``now_s`` is the time of the event running."""

    def __init__(self) -> None:
        self.now_s = 0.0
        self._heap: list[tuple[float, int, Callable[..., Any], tuple]] = []
        self._seq = 0
        self.events_run = 0

    def at(self, time_s: float, callback: Callable[..., Any], *args: Any) -> None:
        """Schedule ``callback(*args)`` at ``time_s`` (never before now)."""
        if not time_s >= self.now_s:  # also catches NaN
            raise ValueError(f"cannot schedule at {time_s!r}, before now ({self.now_s})")
        self._seq += 1
        heapq.heappush(self._heap, (time_s, self._seq, callback, args))

    def run(self, until_s: float = math.inf) -> None:
        """Run events in time order until none is left or the next one is after ``until_s``."""
        heap = self._heap
        pop = heapq.heappop
        while heap and heap[0][0] <= until_s:
            time_s, _, callback, args = pop(heap)
            self.now_s = time_s
            self.events_run += 1
            callback(*args)

    @property
    def pending(self) -> int:
        return len(self._heap)
