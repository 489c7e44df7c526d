"""The serving path's CPU on the engines' own cores: a load-dependent slowdown of every step.

On a GPU node the engine's forward pass runs on the accelerator and the front end (proxy,
ingress, the token stream, the client) on other cores. On the embedded default, CPU engines
and that whole front end share the host's few cores, so the more requests arrive, the less
CPU is left to the engines and the longer each step takes. Measured on the 2-core development
machine (``bench/results/SIMULATION.md``, "The simulator against a live run"): the engines'
refitted per-token cost drifts from 34 to 50 us under 1.5x overload, their measured prefill
rate falls, and their budgets are a third to two thirds of what the simulator predicts
without this model.

The model: each request arriving at the cluster (refused ones too: a 429 is parsed and
answered) costs ``cpu_s_per_request`` seconds of host CPU. Over the last ``window_s`` of
simulated time that is a share ``u = min(max_share, rate * cpu_s_per_request / cores)`` of
the host; the engines get ``1 - u``, so a step takes ``1 / (1 - u)`` times its uncontended
time. A profile calibrated live at ``reference_rps`` already holds that load's slowdown, so
steps are scaled by ``(1 - u_ref) / (1 - u)``: 1 at the calibration load, below 1 under
lighter load, above under heavier.

This is a fake of the host's scheduler (a processor-sharing share, no priorities, no cache
effects), named as such; ``cpu_s_per_request`` is fitted from two live calibration replays
(``cluster.bench.sim_vs_live.fit_host_cpu``).
"""

from __future__ import annotations

import math
from collections import deque


class SharedHost:
    """Arrivals on a shared host and the step slowdown they cause (see the module docstring).

    Raises ``ValueError`` for a negative CPU cost, cores <= 0, a negative reference rate, a
    window <= 0 or a ``max_share`` outside (0, 1).
    """

    def __init__(self, cpu_s_per_request: float, *, cores: float = 2.0, reference_rps: float = 0.0,
                 window_s: float = 1.0, max_share: float = 0.9) -> None:
        if not (math.isfinite(cpu_s_per_request) and cpu_s_per_request >= 0):
            raise ValueError(f"cpu_s_per_request must be a finite number >= 0, got {cpu_s_per_request!r}")
        if not cores > 0:
            raise ValueError(f"cores must be > 0, got {cores!r}")
        if not reference_rps >= 0:
            raise ValueError(f"reference_rps must be >= 0, got {reference_rps!r}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        if not 0 < max_share < 1:
            raise ValueError(f"max_share must be in (0, 1), got {max_share!r}")
        self.cpu_s_per_request = cpu_s_per_request
        self.cores = cores
        self.window_s = window_s
        self.max_share = max_share
        self._reference_free = 1.0 - self.share(reference_rps)
        self._arrivals: deque[float] = deque()

    def share(self, rate_rps: float) -> float:
        """The host's share the front end takes at ``rate_rps`` arrivals a second, in [0, max_share]."""
        return min(self.max_share, rate_rps * self.cpu_s_per_request / self.cores)

    def arrive(self, now_s: float) -> None:
        """Count one arrival at ``now_s`` (seconds of simulated time, non-decreasing)."""
        self._arrivals.append(now_s)

    def rate_rps(self, now_s: float) -> float:
        """Arrivals a second over the last ``window_s``."""
        while self._arrivals and self._arrivals[0] <= now_s - self.window_s:
            self._arrivals.popleft()
        return len(self._arrivals) / self.window_s

    def slowdown(self, now_s: float) -> float:
        """What a step starting at ``now_s`` is multiplied by: ``(1 - u_ref) / (1 - u(now))``."""
        return self._reference_free / (1.0 - self.share(self.rate_rps(now_s)))
