"""The one percentile every part of the project uses (node, balancer, simulator, benchmarks)."""

from __future__ import annotations

from typing import Iterable, Optional


def percentile(values: Iterable[float], q: float, *, method: str = "linear") -> Optional[float]:
    """The ``q``-th percentile (0..100) of ``values``; None when there are none.

    NumPy's ``np.percentile`` with its ``method`` ("linear" interpolates between
    closest ranks; "lower" is the nearest rank at or below, a value that was
    seen). Raises ``ValueError`` for ``q`` outside [0, 100].
    """
    import numpy as np

    arr = np.fromiter(values, dtype=float)
    if arr.size == 0:
        return None
    return float(np.percentile(arr, q, method=method))
