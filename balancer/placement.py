"""The balancer's placement interface: node reports in, one decision per request out.

A node publishes a ``NodeView`` (its PAB and load counters); the balancer keeps
the latest view of every node, chooses a node for each request, and debits its
local copy of that node's view at once so that a burst arriving between two
reports does not herd onto the same node (DESIGN section 3).

Everything here is pure: no clocks, no I/O, randomness only from a
``random.Random`` passed in. The simulator and the Ray Serve router host the
very same objects.

Admission cap (DESIGN section 4, "naive admission cap"): any policy may be
given ``admission_cap_tokens``; a request is then rejected when the node the
policy chose already has more outstanding prefill tokens than the cap once
this prompt is added. A natural cap is what an idle node prefills within the
TTFT SLO, ``(ttft_slo_s - a) / b`` (see ``idle_prefill_tokens``).

Stale reports: a report measured before some placements reached the node
does not include them. When the node says how many requests it has received
(``NodeView.received_requests``), the balancer keeps the debits of the
placements the report has not seen yet and re-applies them on top of it, so a
delayed report never makes a burst in transit vanish. Without that count a
report simply replaces the view.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class NodeView:
    """What one node last reported about itself.

    ``pab_tokens`` is its Prefill Admission Budget, ``in_flight`` the requests it
    holds (queued or running), ``queued_prefill_tokens`` the prompt tokens it has
    still to prefill, ``kv_usage`` the used fraction of its KV cache (0..1),
    ``waiting`` the requests that have not started prefill, ``reported_at_s``
    the node's clock when it measured all this. ``prefill_rate_tps`` (PAB's R)
    lets the balancer suggest a Retry-After; ``kv_capacity_tokens`` lets it
    debit KV usage locally. Both may be 0 when unknown.
    """

    node_id: int
    pab_tokens: float = 0.0
    in_flight: int = 0
    queued_prefill_tokens: int = 0
    kv_usage: float = 0.0
    waiting: int = 0
    reported_at_s: float = 0.0
    prefill_rate_tps: float = 0.0
    kv_capacity_tokens: int = 0
    received_requests: int | None = None  # requests the node has received from this balancer, all time


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes: ``node_id``, or ``None`` for a rejection (HTTP 429).

    ``reason`` names why (the policy, or what made it reject); ``retry_after_s``
    is a hint for the client on rejection.
    """

    node_id: int | None
    reason: str
    retry_after_s: float | None = None

    @property
    def rejected(self) -> bool:
        return self.node_id is None


@dataclass
class _LocalView:
    """The balancer's mutable copy of a node's view: the last report plus debits since."""

    node_id: int
    pab_tokens: float = 0.0
    queued_prefill_tokens: int = 0
    kv_usage: float = 0.0
    waiting: int = 0
    prefill_rate_tps: float = 0.0
    kv_capacity_tokens: int = 0
    reported_at_s: float = 0.0


def idle_prefill_tokens(ttft_slo_s: float, a_s: float, b_s_per_token: float) -> int:
    """Prompt tokens an idle node prefills within the TTFT SLO: the naive admission cap."""
    if b_s_per_token <= 0:
        raise ValueError(f"b_s_per_token must be > 0, got {b_s_per_token!r}")
    return max(0, int((ttft_slo_s - a_s) / b_s_per_token))


class PlacementPolicy:
    """Base of every placement policy.

    Subclasses implement ``_pick(prompt_tokens)`` returning a node id (or
    ``None`` to reject with their own reason). The base keeps the views, the
    exact in-flight counts (the balancer sees every dispatch and completion, so
    it needs no report for them), the debits and the admission cap.
    """

    name = "placement"

    def __init__(
        self,
        node_ids: Sequence[int],
        *,
        admission_cap_tokens: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not node_ids:
            raise ValueError("a balancer needs at least one node")
        if len(set(node_ids)) != len(node_ids):
            raise ValueError(f"node ids must be distinct, got {list(node_ids)}")
        if admission_cap_tokens is not None and admission_cap_tokens < 0:
            raise ValueError(f"admission_cap_tokens must be >= 0, got {admission_cap_tokens!r}")
        self.node_ids = list(node_ids)
        self.admission_cap_tokens = admission_cap_tokens
        self.rng = rng if rng is not None else random.Random(0)
        self.views: dict[int, _LocalView] = {n: _LocalView(n) for n in self.node_ids}
        self.in_flight: dict[int, int] = {n: 0 for n in self.node_ids}
        self.dispatched: dict[int, int] = {n: 0 for n in self.node_ids}  # placements, all time
        self._unacknowledged: dict[int, deque[int]] = {n: deque() for n in self.node_ids}  # prompt tokens
        self._reject_reason = "rejected"

    # -- reports and bookkeeping -------------------------------------------------

    def update(self, view: NodeView) -> None:
        """A fresh report replaces the local view of that node (debits since are dropped).

        A report older than the one already held is ignored, so reports
        delivered out of order never roll a view back.
        """
        local = self.views.get(view.node_id)
        if local is None:
            raise ValueError(f"unknown node {view.node_id!r}; nodes are {self.node_ids}")
        if view.reported_at_s < local.reported_at_s:
            return
        local.pab_tokens = view.pab_tokens
        local.queued_prefill_tokens = view.queued_prefill_tokens
        local.kv_usage = view.kv_usage
        local.waiting = view.waiting
        local.prefill_rate_tps = view.prefill_rate_tps
        local.kv_capacity_tokens = view.kv_capacity_tokens
        local.reported_at_s = view.reported_at_s
        pending = self._unacknowledged[view.node_id]
        if view.received_requests is None:
            pending.clear()
            return
        seen = view.received_requests - (self.dispatched[view.node_id] - len(pending))
        for _ in range(min(max(seen, 0), len(pending))):
            pending.popleft()
        for prompt_tokens in pending:  # placements the report has not seen yet
            self._debit_view(local, prompt_tokens)

    def on_complete(self, node_id: int) -> None:
        """A request placed on ``node_id`` finished (or was dropped there)."""
        if self.in_flight.get(node_id, 0) <= 0:
            raise ValueError(f"node {node_id!r} has no request in flight to complete")
        self.in_flight[node_id] -= 1

    def view(self, node_id: int) -> NodeView:
        """The balancer's current view of a node, debits included (read-only copy)."""
        v = self.views[node_id]
        return NodeView(
            node_id=node_id,
            pab_tokens=v.pab_tokens,
            in_flight=self.in_flight[node_id],
            queued_prefill_tokens=v.queued_prefill_tokens,
            kv_usage=v.kv_usage,
            waiting=v.waiting,
            reported_at_s=v.reported_at_s,
            prefill_rate_tps=v.prefill_rate_tps,
            kv_capacity_tokens=v.kv_capacity_tokens,
        )

    # -- the decision ------------------------------------------------------------

    def choose(self, request_id: str, prompt_tokens: int) -> Decision:
        """Place one request of ``prompt_tokens`` uncached prompt tokens, or reject it.

        On placement the chosen node's local view is debited at once: PAB
        ``-= L``, queued prefill ``+= L``, waiting and in-flight ``+= 1``, KV
        usage by ``L`` over its capacity.
        """
        if prompt_tokens < 1:
            raise ValueError(f"request {request_id!r}: prompt_tokens must be >= 1, got {prompt_tokens!r}")
        node = self._pick(prompt_tokens)
        if node is None:
            return Decision(None, self._reject_reason, self._retry_after_s(prompt_tokens))
        cap = self.admission_cap_tokens
        if cap is not None and self.views[node].queued_prefill_tokens + prompt_tokens > cap:
            return Decision(None, "admission-cap", self._retry_after_s(prompt_tokens))
        self._debit(node, prompt_tokens)
        return Decision(node, self.name)

    def _pick(self, prompt_tokens: int) -> int | None:
        raise NotImplementedError

    def _debit(self, node: int, prompt_tokens: int) -> None:
        self._debit_view(self.views[node], prompt_tokens)
        self.in_flight[node] += 1
        self.dispatched[node] += 1
        self._unacknowledged[node].append(prompt_tokens)

    @staticmethod
    def _debit_view(v: _LocalView, prompt_tokens: int) -> None:
        v.pab_tokens -= prompt_tokens
        v.queued_prefill_tokens += prompt_tokens
        v.waiting += 1
        if v.kv_capacity_tokens > 0:
            v.kv_usage = min(1.0, v.kv_usage + prompt_tokens / v.kv_capacity_tokens)

    def _retry_after_s(self, prompt_tokens: int) -> float:
        """Seconds until some node's budget could cover the request at its prefill rate."""
        waits = [
            max(prompt_tokens - v.pab_tokens, 0.0) / v.prefill_rate_tps
            for v in self.views.values()
            if v.prefill_rate_tps > 0
        ]
        return min(waits) if waits else 1.0
