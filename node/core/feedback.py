"""The admission budget's closed loop: measured latency corrects the modelled prefill rate.

PAB is a model's promise (``node.core.pab``). What admitted requests actually get
(their TTFT measured from the ingress arrival stamp to the first token, their
mean TPOT) is compared with their SLOs, and a factor on the node's prefill rate
follows:

* **shrink fast**: when the ``quantile`` of ``measured / SLO`` over the requests
  admitted since the last decrease exceeds ``target_ratio``, the factor is
  multiplied by ``target_ratio / measured`` (at most ``max_decrease`` in one
  step): the gradient rule of Netflix's concurrency-limits and Envoy's
  adaptive concurrency filter;
* **without waiting for late news**: an admitted request still without its
  first token counts with its age so far, a lower bound of its TTFT (a
  censored observation), so a queue that grows past the target shrinks the
  budget before its late first tokens come back;
* **once per round trip**: only requests that arrived after the last decrease
  may cause the next one, and not within ``cooldown_s`` of it (the feedback
  delay: a first token comes up to a TTFT after admission), as TCP decreases
  its window once per round trip, so breaches of requests admitted under the
  old budget do not shrink it again;
* **recover slowly, on evidence**: each ``interval_s`` in which at least
  ``min_samples`` requests admitted since the last cut were measured within
  the target, the factor grows by the square root of the gradient
  ``target / measured``, at most by ``increase_ratio``, up to ``max_factor``:
  near the target it creeps (a tail at 90 % of the target grows it 5 %), far
  below it recovers quickly, so the loop settles instead of sawing between an
  overshoot and a cut (the gradient of Netflix's concurrency limits, damped). An idle
  node does not grow its factor (TCP's congestion window validation, RFC 7661:
  no growth while application-limited), so a burst after a lull meets the
  budget the last load earned; after ``window_s`` without any sample it probes
  upward additively, and at once (by ``increase_ratio``) when the host says it
  is *starved*: empty, with a budget too small for a typical request, so that
  no evidence could ever come.

The factor also shrinks on TPOT breaches (decodes of admitted requests running
late means the node took more than its steps can carry), judged against their
own target ``tpot_target_ratio`` (0.9): a FairBatching node paces decodes to a
planned fraction of the TPOT SLO, and that plan is not a breach.

``FrontDelay`` keeps the time requests spend in front of the engine (proxy,
ingress, router, the hop to the replica): the horizon of the budget is the TTFT
SLO less its ``quantile``.

Pure: the caller passes every time in, seconds, on one clock for observations, arrivals and
``update`` (a host uses the clock of its arrival stamps, ``time.time()``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from node.core.attainment import percentile
from node.core.request import SLO


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    """Knobs of the closed loop (see the module docstring)."""

    enabled: bool = True
    quantile: float = 0.9  # the tail that is steered
    target_ratio: float = 0.7  # steer that tail to this fraction of the SLO (margin for what is not measured)
    # TPOT's own target: a FairBatching node paces decodes to (1 - tpot_margin) of the TPOT SLO on
    # purpose, so a TPOT near 0.8 of its SLO is the plan, not a breach; above this it is one.
    tpot_target_ratio: float = 0.9
    min_samples: int = 4  # breaches among fewer samples are not acted on
    max_decrease: float = 0.5  # one decrease multiplies the factor by at least this
    increase_step: float = 0.05  # additive probe after window_s without any sample
    interval_s: float = 1.0
    increase_ratio: float = 1.25  # cap on one interval's growth; the starved node's probe
    cooldown_s: float = 2.0  # no two decreases closer than this (the feedback delay; about the TTFT SLO)
    min_factor: float = 0.1  # at 0.1 an idle node still takes a typical prompt, so the loop can see it recover
    max_factor: float = 1.0
    window_s: float = 10.0  # samples older than this are forgotten
    # The measured prefill rate that caps PAB's (PrefillRate): the prompt tokens prefilled while prompts
    # waited over the time they waited (True), or every prompt token over the whole window (False: the
    # rate before 2026-12-02, which reads low when the node is saturated only part of the time).
    prefill_rate_over_busy_time: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile!r}")
        if not 0 < self.target_ratio <= 1:
            raise ValueError(f"target_ratio must be in (0, 1], got {self.target_ratio!r}")
        if not 0 < self.tpot_target_ratio <= 1:
            raise ValueError(f"tpot_target_ratio must be in (0, 1], got {self.tpot_target_ratio!r}")
        if not 0 < self.max_decrease < 1:
            raise ValueError(f"max_decrease must be in (0, 1), got {self.max_decrease!r}")
        if not 0 < self.min_factor <= self.max_factor:
            raise ValueError("need 0 < min_factor <= max_factor")
        if self.increase_step < 0 or self.interval_s <= 0 or self.window_s <= 0 or self.min_samples < 1:
            raise ValueError("increase_step >= 0, interval_s > 0, window_s > 0 and min_samples >= 1 required")
        if self.increase_ratio < 1 or self.cooldown_s < 0:
            raise ValueError("increase_ratio >= 1 and cooldown_s >= 0 required")


class LatencyFeedback:
    """AIMD on the measured latency tail of admitted requests; ``factor`` multiplies the node's prefill rate."""

    def __init__(self, config: FeedbackConfig | None = None) -> None:
        self.config = config or FeedbackConfig()
        self.factor = min(1.0, self.config.max_factor)
        # (observed at, arrived at, measured / SLO), oldest first
        self._samples: deque[tuple[float, float, float]] = deque()
        self._last_decrease_arrival = -math.inf
        self._last_decrease_s = -math.inf
        self._last_update = -math.inf
        self.decreases = 0
        self.last_tail_ratio: float | None = None

    def observe(self, now_s: float, arrival_s: float, ratio: float, *, tpot: bool = False) -> None:
        """A measured latency of a request that arrived at ``arrival_s``, as a fraction of its SLO.

        ``tpot``: the ratio is a mean TPOT's, judged against ``tpot_target_ratio``
        (it is kept scaled so that its target meets ``target_ratio``).
        """
        if tpot:
            ratio *= self.config.target_ratio / self.config.tpot_target_ratio
        if math.isfinite(ratio) and ratio >= 0:
            self._samples.append((now_s, arrival_s, ratio))

    def observe_first_token(self, now_s: float, arrival_s: float, slo: SLO) -> None:
        """A first token at ``now_s`` of a request that arrived at ``arrival_s`` (seconds, one clock)."""
        self.observe(now_s, arrival_s, (now_s - arrival_s) / slo.ttft_s)

    def observe_mean_tpot(self, now_s: float, arrival_s: float, mean_tpot_s: float, slo: SLO) -> None:
        """A finished request's mean TPOT (seconds), seen at ``now_s``."""
        self.observe(now_s, arrival_s, mean_tpot_s / slo.tpot_s, tpot=True)

    def update(self, now_s: float, *, starved: bool = False,
               waiting: Iterable[tuple[float, float]] = ()) -> float:
        """Apply the rule at most once per ``interval_s``; return the factor.

        ``starved``: the node holds no request and its budget is too small for
        a typical one, so no evidence can come: it probes upward at once (by
        ``increase_ratio``) instead of waiting ``window_s``.

        ``waiting``: ``(arrival_s, ttft_slo_s)`` of the admitted requests still
        without a first token. Their TTFT is not known yet, but it is at least
        their age ``now_s - arrival_s`` (a censored observation): the tail over the
        measured requests and these lower bounds is a lower bound of the real
        tail, so when it exceeds the target the budget shrinks now, not a TTFT
        later when those first tokens come (a budget that starts optimistic,
        from a model fitted on a quiet machine, otherwise fills the queue for
        seconds before the first late token is seen). Growth is judged on
        measured requests only, and only while no lower bound breaches.
        """
        cfg = self.config
        if not cfg.enabled or now_s - self._last_update < cfg.interval_s:
            return self.factor
        self._last_update = now_s
        while self._samples and now_s - self._samples[0][0] > cfg.window_s:
            self._samples.popleft()
        fresh = [r for _, arrived, r in self._samples if arrived > self._last_decrease_arrival]
        waiting = list(waiting)
        pending = [(now_s - arrived) / slo_s for arrived, slo_s in waiting
                   if arrived > self._last_decrease_arrival and slo_s > 0]
        known = fresh + pending
        tail = percentile(known, 100 * cfg.quantile) if len(known) >= cfg.min_samples else None
        if tail is not None and tail <= cfg.target_ratio:  # no breach, even counting the waiting: grow on measurements
            tail = percentile(fresh, 100 * cfg.quantile) if len(fresh) >= cfg.min_samples else None
            if tail is not None and any(r > cfg.target_ratio for r in pending):
                tail = cfg.target_ratio  # hold: a waiting request is already late
        self.last_tail_ratio = tail
        if tail is not None and tail > cfg.target_ratio:
            if now_s - self._last_decrease_s >= cfg.cooldown_s:
                step = max(cfg.max_decrease, cfg.target_ratio / tail)
                self.factor = max(cfg.min_factor, self.factor * step)
                self._last_decrease_arrival = now_s  # requests that arrive from now on see the new budget
                self._last_decrease_s = now_s
                self.decreases += 1
        elif tail is not None:
            gradient = cfg.target_ratio / tail if tail > 0 else math.inf
            self.factor = min(cfg.max_factor, self.factor * min(cfg.increase_ratio, math.sqrt(gradient)))
        elif starved:
            self.factor = min(cfg.max_factor, self.factor * cfg.increase_ratio)
        elif not self._samples and not waiting:  # nothing measured for window_s, nothing waiting: probe
            self.factor = min(cfg.max_factor, self.factor + cfg.increase_step)
        return self.factor


class FrontDelay:
    """Delays in front of the engine of the last ``window_s``; ``value_s(now)`` is their ``quantile`` (0 with none)."""

    def __init__(self, *, quantile_: float = 0.9, window_s: float = 3.0, max_samples: int = 512) -> None:
        if not 0 < quantile_ <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile_!r}")
        self.q = quantile_
        self.window_s = window_s
        self._delays: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (observed at, delay)

    def observe(self, now_s: float, delay_s: float) -> None:
        if math.isfinite(delay_s):
            self._delays.append((now_s, max(0.0, delay_s)))

    def value_s(self, now_s: float) -> float:
        while self._delays and now_s - self._delays[0][0] > self.window_s:
            self._delays.popleft()
        return percentile([d for _, d in self._delays], 100 * self.q) if self._delays else 0.0


class PrefillRate:
    """The prefill rate a node delivers while it has a queue: its real service rate.

    The host records each prompt whose first token came (``prefilled``) and,
    at every report tick, whether prompts queued behind the one in prefill
    (``tick``: more prompt tokens waiting than one step prefills; a prompt
    being prefilled alone would make a lightly loaded node look saturated at
    whatever rate it was offered). Over the last ``window_s``, when prompts
    waited in at least ``min_busy`` of the ticks, the rate is the prompt tokens
    that finished prefill while prompts waited (at a tick that saw a queue)
    over the time prompts waited (``over_busy_time``, the default): what the
    node drains a queue at, at its present decode load. ``over_busy_time``
    False: every prompt token finished in the window over the whole window,
    the rate before 2026-12-02, which reads the drain rate times the share of
    the window the node was saturated; measured on the embedded default at
    1.5x capacity (saturated in 57-66 % of the polls) it read 18-33 % below
    the engines' drain rate, and PAB planned with it; over the waiting time,
    2-7 % below (``bench/results/SIMULATION.md``, "What the engines drain
    against what they measure"). A measurement stands for ``memory_s`` (a
    budget capped by it drains the queue, and a node that no longer queues
    measures nothing new); with none, it says nothing (None).

    ``min_busy`` defaults to 0.5 over the waiting time, 0.8 over the window.
    Raises ``ValueError`` for ``window_s`` <= 0, ``min_busy`` outside (0, 1],
    ``min_prompts`` < 1 or ``memory_s`` < 0.
    """

    def __init__(self, *, window_s: float = 5.0, min_busy: float | None = None, min_prompts: int = 4,
                 memory_s: float = 30.0, over_busy_time: bool = True) -> None:
        if min_busy is None:  # over the waiting time, half the window is evidence enough
            min_busy = 0.5 if over_busy_time else 0.8
        if window_s <= 0 or not 0 < min_busy <= 1 or min_prompts < 1 or memory_s < 0:
            raise ValueError("window_s > 0, min_busy in (0, 1], min_prompts >= 1 and memory_s >= 0 required")
        self.window_s = window_s
        self.min_busy = min_busy
        self.min_prompts = min_prompts
        self.memory_s = memory_s
        self.over_busy_time = over_busy_time
        self._last: tuple[float, float] | None = None  # (measured at, tokens/s)
        self._done: deque[tuple[float, int, bool]] = deque()  # (first token at, prompt tokens, prompts waited)
        self._ticks: deque[tuple[float, bool]] = deque()  # (at, prompts were waiting)
        self._waiting = False  # what the last tick saw

    def prefilled(self, now_s: float, prompt_tokens: int) -> None:
        self._done.append((now_s, prompt_tokens, self._waiting))

    def tick(self, now_s: float, waiting: bool) -> None:
        self._ticks.append((now_s, waiting))
        self._waiting = waiting

    def rate_tps(self, now_s: float) -> float | None:
        for q in (self._done, self._ticks):
            while q and now_s - q[0][0] > self.window_s:
                q.popleft()
        span = now_s - self._ticks[0][0] if self._ticks else 0.0
        if span >= 0.5 * self.window_s:
            busy = sum(w for _, w in self._ticks) / len(self._ticks)
            if self.over_busy_time:
                done = [n for _, n, waited in self._done if waited]
                seconds = busy * span
            else:
                done = [n for _, n, _ in self._done]
                seconds = span
            if busy >= self.min_busy and len(done) >= self.min_prompts:
                self._last = (now_s, sum(done) / seconds)
        if self._last is not None and now_s - self._last[0] <= self.memory_s:
            return self._last[1]
        return None


class SlowStart:
    """TCP's slow start for a node that has no evidence of its own speed yet.

    A node's first budget comes from its profile, a model fitted elsewhere (on a
    quiet machine, or another host), and can promise many times what the node
    delivers: measured on the embedded default, the shipped CPU profile offered
    89k prompt tokens per engine where the engine, under load, prefilled about
    2k tokens a second (``bench/results/SERVE.md``), so a fresh cluster admitted
    seconds of backlog before any first token came back. Until the node has
    evidence (its own refitted step model, the deployment's, or a measured
    prefill rate), its prefill rate is capped at ``rate_cap_tps``: it starts at
    ``initial_tps`` and, as TCP's congestion window does each round trip,
    doubles every ``interval_s`` in which the closed loop measured latencies
    below the target, halves when they breach it, and is held otherwise (no
    news, or a tail at the target: ``LatencyFeedback`` reports the target
    itself while a waiting request is already late).
    ``end()`` lifts the cap for good (the cap is None from then on).
    """

    def __init__(self, initial_tps: float, *, growth: float = 2.0, interval_s: float = 1.0) -> None:
        if not (initial_tps > 0 and math.isfinite(initial_tps)) or growth <= 1 or interval_s <= 0:
            raise ValueError("initial_tps > 0 (finite), growth > 1 and interval_s > 0 required")
        self.growth = growth
        self.interval_s = interval_s
        self.rate_cap_tps: float | None = initial_tps
        self._floor = initial_tps
        self._last_update = -math.inf

    @property
    def active(self) -> bool:
        return self.rate_cap_tps is not None

    def end(self) -> None:
        self.rate_cap_tps = None

    def update(self, now_s: float, tail_ratio: float | None, target_ratio: float) -> float | None:
        """One step per ``interval_s`` on the loop's last measured tail (None: no news); return the cap."""
        if self.rate_cap_tps is None or now_s - self._last_update < self.interval_s:
            return self.rate_cap_tps
        self._last_update = now_s
        if tail_ratio is not None and tail_ratio < target_ratio:
            self.rate_cap_tps *= self.growth
        elif tail_ratio is not None and tail_ratio > target_ratio:
            self.rate_cap_tps = max(self._floor, self.rate_cap_tps / self.growth)
        return self.rate_cap_tps
