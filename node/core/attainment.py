"""SLO attainment and latency percentiles: one definition for every host (DESIGN section 6).

The simulator, the engine replica's metrics, the live load generator and the
benchmarks all score requests with these functions, so a figure from one is
comparable with a figure from another.

* A request *meets its SLO* iff it has a first token within its TTFT SLO and its
  mean TPOT ``(t_last - t_first) / (n - 1)`` is within its TPOT SLO (a one-token
  request needs only the TTFT).
* Per-token attainment counts tokens emitted by their envelope deadline
  (``node.core.envelope``) under both anchors.
* ``percentile`` is NumPy's ``np.percentile`` (methods ``linear`` and ``lower``)
  written out over the standard library, so the core needs nothing else.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

from node.core.envelope import ON_TIME_TOLERANCE_S, on_time_both
from node.core.request import SLO


def mean_tpot_s(first_token_s: float, last_token_s: float, output_tokens: int) -> Optional[float]:
    """Mean time per output token after the first, seconds; None below two tokens."""
    if output_tokens < 2:
        return None
    return (last_token_s - first_token_s) / (output_tokens - 1)


def meets_slo(ttft_s: Optional[float], tpot_s: Optional[float], slo: SLO) -> bool:
    """The per-request SLO test: a first token within ``slo.ttft_s`` and a mean TPOT
    (None for a one-token request) within ``slo.tpot_s``; all seconds."""
    if ttft_s is None or ttft_s > slo.ttft_s + ON_TIME_TOLERANCE_S:
        return False
    return tpot_s is None or tpot_s <= slo.tpot_s + ON_TIME_TOLERANCE_S


def tokens_on_time(arrival_s: float, token_times_s: Sequence[float], slo: SLO) -> tuple[int, int]:
    """How many of the tokens emitted at ``token_times_s`` met their deadline under the
    ``arrival`` and under the ``first-token`` anchor, in that order."""
    if not token_times_s:
        return 0, 0
    first = token_times_s[0]
    on_arrival = on_first = 0
    for j, t in enumerate(token_times_s):
        a, f = on_time_both(t, arrival_s, slo, j, first)
        on_arrival += a
        on_first += f
    return on_arrival, on_first


def percentile(values: Iterable[float], q: float, *, method: str = "linear") -> Optional[float]:
    """The ``q``-th percentile (0..100) of ``values``; None when there are none.

    As NumPy's ``np.percentile`` with ``method="linear"`` (interpolates between the
    closest ranks), ``"lower"`` (the nearest rank at or below: a value that was seen)
    or ``"higher"`` (the nearest rank at or above: a tail no sample beats). Raises
    ``ValueError`` for ``q`` outside [0, 100] or another method.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within [0, 100], got {q!r}")
    if method not in ("linear", "lower", "higher"):
        raise ValueError(f"percentile method must be 'linear', 'lower' or 'higher', got {method!r}")
    ordered = sorted(float(v) for v in values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    if method == "higher":
        return ordered[math.ceil(rank)]
    if method == "lower" or low == len(ordered) - 1:
        return ordered[low]
    frac = rank - low
    a, b = ordered[low], ordered[low + 1]
    return a + (b - a) * frac
