"""The serving path's CPU on the engines' own cores: a load-dependent slowdown of every step.

On a GPU node the engine's forward pass runs on the accelerator and the front end (proxy,
ingress, the token stream, the client) on other cores. On the embedded default, CPU engines
and that whole front end share the host's few cores, so the more requests arrive, the less
CPU is left to the engines and the longer each step takes. Measured on the 2-core development
machine (``bench/results/SIMULATION.md``, "The simulator against a live run"): under 1.5x
overload the engines' measured prefill rate falls and their budgets are a third to two thirds
of what the simulator predicts without this model.

The model: each request arriving at the cluster costs ``cpu_s_per_request`` seconds of host
CPU, or ``cpu_s_per_refusal`` when it is refused at once (a 429 is parsed and answered, but
nothing is streamed), over a constant ``background_cores`` (Ray's daemons, the proxy's idle
loop: what the serving path uses with no request at all). Over the last ``window_s`` of
simulated time that is a share ``u = min(max_share, (background_cores + CPU seconds / window_s)
/ cores)`` of the host; the engines get ``1 - u``, so a step takes ``1 / (1 - u)`` times its
uncontended time. A profile calibrated live at ``reference_rps`` already holds that load's
slowdown, so steps are scaled by ``(1 - u_ref) / (1 - u)``: 1 at the calibration load, below 1
under lighter load, above under heavier.

``max_share`` is the most of the host the serving path can take from the engines once the host
is saturated: the host's scheduler shares the cores between the runnable processes, so past
saturation a growing demand is not served, it waits. Measured on the 2-core development machine
at 1.5x overload: the serving path held 0.99-1.08 of the 2 cores beside the engines' 0.91-1.00,
however much more a linear cost per request would have asked for (``bench/results/SIMULATION.md``,
"A steady window"); ``fairbatching bench sim-vs-live`` therefore caps it at half the host.

This is a fake of the host's scheduler (a processor-sharing share, no priorities, no cache
effects), named as such; the costs are fitted from live replays at two or three loads
(``cluster.bench.sim_vs_live.fit_host_cpu``).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from collections.abc import Sequence

#: ``IngressDelay.fit_stalls``: a request is held by a stall when its delay exceeds this many times the
#: median delay of its load ...
STALL_THRESHOLD_X = 3.0
#: ... and this many seconds (at light load the median is a few milliseconds).
STALL_MIN_S = 0.05
#: ``IngressDelay.fit_stalls``: the fewest logged requests one load's fit reads.
MIN_LOGGED = 20


class SharedHost:
    """Arrivals on a shared host and the step slowdown they cause (see the module docstring).

    ``cpu_s_per_refusal``: what a refused request costs (a 429 is parsed and answered, nothing is
    streamed); None: as much as a served one. ``reference_refused_share``: the share of the
    requests refused at the calibration load. ``background_cores``: the serving path's CPU with no
    request, cores; ``max_share``: the most of the host it can take.

    Raises ``ValueError`` for a negative CPU cost or background, cores <= 0, a negative reference rate, a
    refused share outside [0, 1], a window <= 0 or a ``max_share`` outside (0, 1).
    """

    def __init__(self, cpu_s_per_request: float, *, cpu_s_per_refusal: float | None = None, cores: float = 2.0,
                 reference_rps: float = 0.0, reference_refused_share: float = 0.0,
                 window_s: float = 1.0, max_share: float = 0.9, background_cores: float = 0.0) -> None:
        refusal = cpu_s_per_request if cpu_s_per_refusal is None else cpu_s_per_refusal
        for name, value in (("cpu_s_per_request", cpu_s_per_request), ("cpu_s_per_refusal", refusal),
                            ("background_cores", background_cores)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not cores > 0:
            raise ValueError(f"cores must be > 0, got {cores!r}")
        if not reference_rps >= 0:
            raise ValueError(f"reference_rps must be >= 0, got {reference_rps!r}")
        if not 0 <= reference_refused_share <= 1:
            raise ValueError(f"reference_refused_share must be in [0, 1], got {reference_refused_share!r}")
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        if not 0 < max_share < 1:
            raise ValueError(f"max_share must be in (0, 1), got {max_share!r}")
        self.cpu_s_per_request = cpu_s_per_request
        self.cpu_s_per_refusal = refusal
        self.cores = cores
        self.window_s = window_s
        self.max_share = max_share
        self.background_cores = background_cores
        f = reference_refused_share
        reference = (background_cores + reference_rps * ((1 - f) * cpu_s_per_request + f * refusal)) / cores
        self._reference_free = 1.0 - min(max_share, reference)  # at the ceiling there too: never slower than then
        self._charges: deque[list[float]] = deque()  # [arrival time, CPU seconds], one per arrival
        self._cpu_in_window = 0.0

    def share(self, cpu_s_per_s: float) -> float:
        """The host's share the serving path takes when its requests use ``cpu_s_per_s`` CPU seconds a second
        (its background added), in [0, max_share]."""
        return min(self.max_share, (self.background_cores + cpu_s_per_s) / self.cores)

    def arrive(self, now_s: float) -> list[float]:
        """Count one arrival at ``now_s`` (seconds of simulated time, non-decreasing), charged as served
        until ``refuse`` says otherwise; returns its charge (for ``refuse``)."""
        charge = [now_s, self.cpu_s_per_request]
        self._charges.append(charge)
        self._cpu_in_window += self.cpu_s_per_request
        return charge

    def refuse(self, charge: list[float]) -> None:
        """The arrival ``arrive`` returned ``charge`` for was refused: charge it a refusal's cost instead of
        a served request's (while it is still in the window; once out of it, it no longer counts)."""
        if any(c is charge for c in reversed(self._charges)):
            self._cpu_in_window += self.cpu_s_per_refusal - charge[1]
        charge[1] = self.cpu_s_per_refusal

    def cpu_s_per_s(self, now_s: float) -> float:
        """The serving path's CPU seconds a second over the last ``window_s``."""
        while self._charges and self._charges[0][0] <= now_s - self.window_s:
            self._cpu_in_window -= self._charges.popleft()[1]
        if not self._charges:
            self._cpu_in_window = 0.0  # no drift from the running sum
        return max(0.0, self._cpu_in_window) / self.window_s

    def slowdown(self, now_s: float) -> float:
        """What a step starting at ``now_s`` is multiplied by: ``(1 - u_ref) / (1 - u(now))``."""
        return self._reference_free / (1.0 - self.share(self.cpu_s_per_s(now_s)))


class IngressDelay:
    """The serving path's time in front of the engines on a shared host: from a request's arrival at the
    front proxy to its engine (the proxy, the ingress parsing and rendering it, the router, Ray's hops).

    Two parts, both functions of ``r``, the arrival rate over the last ``window_s`` (requests a second,
    this arrival included):

    * a base delay every request pays, ``base_s + s_per_rps * r`` seconds;
    * stalls: spells in which the path passes nothing on, as live front-delay logs show under load (runs
      of consecutive requests all held, the first one longest, then released together). They start as a
      Poisson process of ``stalls_per_s(r)`` a second and last ``stall_s(r)`` seconds; a request arriving
      in one waits for its end. Both are interpolated linearly in ``r`` between the measured loads in
      ``stalls`` (``(rate_rps, stalls_per_s, stall_s)`` triples; flat past the first and the last), and
      fitted from one load's log by ``fit_stalls``. Measured on the 2-core development machine
      (``bench/results/SIMULATION.md``, "Stalls in the serving path"): at 2 and 5 req/s 3-9 spells a
      minute of about 55 ms; at 19-22 req/s 0.8-1.1 a second, 0.10-0.14 s long, holding 15-19 % of the
      requests.

    On the embedded default the engines report this as their front delay (``FrontDelay``: the P90 of the
    last 3 s, taken off PAB's horizon): a stall raises that P90 for a few seconds while most requests
    pass in base time, which a single delay per rate cannot do. A fake of the path's queue, named as
    such: no queueing dynamics, only the spells and the level at the current rate.

    Raises ``ValueError`` for a negative or non-finite ``base_s``, ``s_per_rps`` or stall figure, a
    stall rate that is not positive, or ``window_s`` <= 0.
    """

    def __init__(self, base_s: float, s_per_rps: float, *, stalls: Sequence[Sequence[float]] = (),
                 window_s: float = 1.0, seed: int = 0) -> None:
        for name, value in (("base_s", base_s), ("s_per_rps", s_per_rps)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a finite number > 0, got {window_s!r}")
        points = sorted(tuple(float(v) for v in point) for point in stalls)
        for point in points:
            if len(point) != 3:
                raise ValueError(f"a stall point is (rate_rps, stalls_per_s, stall_s), got {point!r}")
            rate, per_s, length = point
            if not (math.isfinite(rate) and rate > 0):
                raise ValueError(f"a stall point's rate_rps must be a finite number > 0, got {rate!r}")
            for name, value in (("stalls_per_s", per_s), ("stall_s", length)):
                if not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"a stall point's {name} must be a finite number >= 0, got {value!r}")
        self.base_s = base_s
        self.s_per_rps = s_per_rps
        self.stalls = points
        self.window_s = window_s
        self._rng = random.Random(seed)
        self._arrivals: deque[float] = deque()
        self._last_s: float | None = None  # the last arrival: stalls are drawn between arrivals
        self._stall_end_s = -math.inf

    @staticmethod
    def fit(loads: list[tuple[float, float]]) -> tuple[float, float]:
        """``(base_s, s_per_rps)`` of the least-squares line through ``loads``, pairs of (arrival rate, req/s;
        front delay, s), its slope and intercept kept >= 0 (a flat line at the mean when the delays fall
        with the rate). Raises ``ValueError`` with fewer than two loads or no spread in their rates."""
        if len(loads) < 2:
            raise ValueError(f"need at least two loads, got {len(loads)}")
        rates, delays = [r for r, _ in loads], [d for _, d in loads]
        mean_r, mean_d = sum(rates) / len(rates), sum(delays) / len(delays)
        spread = sum((r - mean_r) ** 2 for r in rates)
        if spread <= 0:
            raise ValueError(f"the loads' arrival rates do not differ: {rates}")
        slope = max(0.0, sum((r - mean_r) * (d - mean_d) for r, d in loads) / spread)
        base = mean_d - slope * mean_r
        if base < 0:  # through the origin instead
            slope, base = sum(r * d for r, d in loads) / sum(r * r for r in rates), 0.0
        return max(0.0, base), max(0.0, slope)

    @staticmethod
    def fit_stalls(arrivals_s: Sequence[float], delays_s: Sequence[float]) -> dict[str, float]:
        """One load's base delay and stalls from a log of the requests' arrivals in front of the engines
        (seconds, any clock) and their delays there (seconds), in any order.

        A request is held by a stall when its delay exceeds ``STALL_THRESHOLD_X`` times the median and
        ``STALL_MIN_S``; consecutive held requests (by arrival) are one stall, as long as the longest
        delay in it less the base (the first request in a stall waits it whole). Returns ``{"rate_rps",
        "base_s" (the median delay of the requests not held), "stalls_per_s", "stall_s" (mean length, 0
        when none), "held_share"}``. Raises ``ValueError`` for fewer than ``MIN_LOGGED`` requests or
        arrivals that span no time."""
        if len(arrivals_s) != len(delays_s):
            raise ValueError("arrivals_s and delays_s differ in length")
        if len(arrivals_s) < MIN_LOGGED:
            raise ValueError(f"need at least {MIN_LOGGED} logged requests, got {len(arrivals_s)}")
        order = sorted(range(len(arrivals_s)), key=lambda i: arrivals_s[i])
        arrivals = [arrivals_s[i] for i in order]
        delays = [delays_s[i] for i in order]
        span_s = arrivals[-1] - arrivals[0]
        if not span_s > 0:
            raise ValueError("the logged arrivals span no time")
        threshold = max(STALL_MIN_S, STALL_THRESHOLD_X * statistics.median(delays))
        free = [d for d in delays if d <= threshold]
        base = statistics.median(free) if free else threshold
        longest: list[float] = []  # per stall, its longest delay
        held = False
        for d in delays:
            if d > threshold:
                if held:
                    longest[-1] = max(longest[-1], d)
                else:
                    longest.append(d)
                held = True
            else:
                held = False
        return {"rate_rps": (len(arrivals) - 1) / span_s, "base_s": base, "stalls_per_s": len(longest) / span_s,
                "stall_s": statistics.fmean(d - base for d in longest) if longest else 0.0,
                "held_share": (len(delays) - len(free)) / len(delays)}

    def _stall_at(self, rate_rps: float) -> tuple[float, float]:
        """``(stalls_per_s, stall_s)`` at ``rate_rps``, interpolated between the stall points."""
        points = self.stalls
        if rate_rps <= points[0][0]:
            return points[0][1], points[0][2]
        for (r0, p0, s0), (r1, p1, s1) in zip(points, points[1:]):
            if rate_rps <= r1:
                w = (rate_rps - r0) / (r1 - r0) if r1 > r0 else 1.0
                return p0 + w * (p1 - p0), s0 + w * (s1 - s0)
        return points[-1][1], points[-1][2]

    def delay_s(self, now_s: float) -> float:
        """Count one arrival at ``now_s`` (simulated seconds, non-decreasing) and return its time in front of
        the engines, seconds."""
        arrivals = self._arrivals
        arrivals.append(now_s)
        while arrivals[0] <= now_s - self.window_s:
            arrivals.popleft()
        rate = len(arrivals) / self.window_s
        if self.stalls:
            per_s, length = self._stall_at(rate)
            t = now_s if self._last_s is None else self._last_s
            while per_s > 0:  # the stalls that started since the last arrival
                t += self._rng.expovariate(per_s)
                if t > now_s:
                    break
                if t > self._stall_end_s:
                    self._stall_end_s = t + length
            self._last_s = now_s
        return self.base_s + self.s_per_rps * rate + max(0.0, self._stall_end_s - now_s)
