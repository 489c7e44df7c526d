"""Requests held at admission for a bounded wait, retried in deadline order.

When no node has budget for a request, the balancer may hold it for up to
``wait_s`` seconds after its arrival instead of refusing it at once, and retry
it each time the nodes report. Which held request goes first matters once SLO
classes share the budget: a batch request that does not fit must not keep an
interactive one that would fit from being placed. ``AdmissionQueue`` is that
queue, one definition for the simulator (``cluster.sim.simulator``) and the
ingress (``cluster.http.api.Ingress``):

* ``edf``: earliest first-token deadline first (arrival + TTFT SLO, the
  deadline FairBatching's envelope starts from, arXiv 2510.14392 section 3), so
  a tighter class goes ahead of a looser one held longer; a request that does
  not fit is passed over and the next one tried.
* ``arrival``: arrival order, passing over a request that does not fit.
* ``fifo``: arrival order, stopping at the first request that does not fit
  (head-of-line blocking: the simulator's queue before this module).

Plain Python, no clock of its own: callers pass ``now_s`` (seconds, any epoch
as long as it is the one of the arrivals).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

#: The orders ``AdmissionQueue`` retries held requests in.
QUEUE_ORDERS = ("edf", "arrival", "fifo")

T = TypeVar("T")


@dataclass
class Held(Generic[T]):
    """One held request: ``item`` (the caller's own object), its arrival and TTFT SLO, seconds."""

    item: T
    arrival_s: float
    ttft_slo_s: float
    seq: int  # ties broken by the order of holding

    @property
    def deadline_s(self) -> float:
        """The first-token deadline: arrival + TTFT SLO."""
        return self.arrival_s + self.ttft_slo_s


class AdmissionQueue(Generic[T]):
    """Requests waiting for budget, each for at most ``wait_s`` after its arrival.

    Raises ``ValueError`` for an unknown ``order`` or a negative ``wait_s``.
    """

    def __init__(self, wait_s: float, order: str = "edf") -> None:
        if order not in QUEUE_ORDERS:
            raise ValueError(f"unknown admission queue order {order!r}; choose one of {', '.join(QUEUE_ORDERS)}")
        if not wait_s >= 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self.wait_s = wait_s
        self.order = order
        self._held: list[Held[T]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._held)

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, item: T, arrival_s: float, ttft_slo_s: float) -> None:
        """Hold ``item`` until it is settled by ``retry`` or its wait is over."""
        self._held.append(Held(item, arrival_s, ttft_slo_s, self._seq))
        self._seq += 1

    def items(self) -> list[T]:
        """The held items, in the order they were held."""
        return [h.item for h in self._held]

    def retry(self, now_s: float, attempt: Callable[[T], bool]) -> list[T]:
        """Try the held requests once, in this queue's order; return those whose wait ran out.

        ``attempt(item)`` tries to place one request and returns True when it is
        settled (placed, or failed for good) and leaves the queue. A request held
        past ``arrival_s + wait_s`` is not tried: it is removed and returned, for
        the caller to refuse. Under ``fifo`` the first unsettled request ends the
        round; the others keep their places.
        """
        expired = [h.item for h in self._held if now_s > h.arrival_s + self.wait_s]
        waiting = [h for h in self._held if now_s <= h.arrival_s + self.wait_s]
        if self.order == "edf":
            waiting.sort(key=lambda h: (h.deadline_s, h.seq))
        kept: list[Held[T]] = []
        for i, h in enumerate(waiting):
            if attempt(h.item):
                continue
            kept.append(h)
            if self.order == "fifo":
                kept.extend(waiting[i + 1:])
                break
        kept.sort(key=lambda h: h.seq)
        self._held = kept
        return expired
