"""The mean of the last few observations: what a node expects of the next request.

A node budgets for a request it has not seen yet (``node.core.pab``): it
assumes the new request's prompt and output are like the recent ones. Both the
vLLM host and the simulator keep these windows with this one class.
"""

from __future__ import annotations

from collections import deque


class RecentMean:
    """Running mean over the last ``window`` observations, O(1) per observation.

    ``mean()`` is None until something was observed. Raises ``ValueError`` on a
    window below 1.
    """

    __slots__ = ("_values", "_sum")

    def __init__(self, window: int = 256) -> None:
        if int(window) < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        self._values: deque[float] = deque(maxlen=int(window))
        self._sum = 0.0

    def add(self, value: float) -> None:
        """Observe one value (the oldest drops out once the window is full)."""
        if len(self._values) == self._values.maxlen:
            self._sum -= self._values[0]
        self._values.append(value)
        self._sum += value

    def mean(self) -> float | None:
        """Mean of the observations in the window, or None before the first."""
        return self._sum / len(self._values) if self._values else None

    def __len__(self) -> int:
        return len(self._values)
