"""Conventional placement policies the cluster is compared against (DESIGN section 4).

* ``RoundRobin``: cycle over the nodes.
* ``PowerOfTwo``: sample two distinct nodes, take the one with fewer requests
  in flight (Ray Serve's default router).
* ``LeastPrefill``: the node with the fewest outstanding prefill tokens
  (llm-d's token-load scorer, Dynamo's least-loaded).
* ``QueueKV``: llm-d's default scoring, waiting-queue length (min-max
  normalised across nodes) plus KV-cache usage; lowest score wins, ties broken
  at random.

None of them rejects by itself or budgets per SLO tier (``held_fraction`` and
``tier`` are ignored); each takes the base class's optional
admission cap.
"""

from __future__ import annotations

from balancer.core.placement import PlacementPolicy


class RoundRobin(PlacementPolicy):
    name = "round-robin"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._next = 0

    def _pick(self, prompt_tokens: int, held_fraction: float, tier: str | None) -> int:
        node = self.node_ids[self._next % len(self.node_ids)]  # the node set may have shrunk since
        self._next = (self._next + 1) % len(self.node_ids)
        return node


class PowerOfTwo(PlacementPolicy):
    name = "power-of-two"

    def _pick(self, prompt_tokens: int, held_fraction: float, tier: str | None) -> int:
        if len(self.node_ids) == 1:
            return self.node_ids[0]
        first, second = self.rng.sample(self.node_ids, 2)
        return second if self.in_flight[second] < self.in_flight[first] else first


class LeastPrefill(PlacementPolicy):
    name = "least-prefill"

    def _pick(self, prompt_tokens: int, held_fraction: float, tier: str | None) -> int:
        views, in_flight = self.views, self.in_flight
        return min(self.node_ids, key=lambda n: (views[n].queued_prefill_tokens, in_flight[n], n))


class QueueKV(PlacementPolicy):
    name = "queue-kv"

    def __init__(self, *args, queue_weight: float = 1.0, kv_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if queue_weight < 0 or kv_weight < 0:
            raise ValueError("queue_weight and kv_weight must be >= 0")
        self.queue_weight = queue_weight
        self.kv_weight = kv_weight

    def _pick(self, prompt_tokens: int, held_fraction: float, tier: str | None) -> int:
        views = self.views
        waiting = [views[n].waiting for n in self.node_ids]
        lo, hi = min(waiting), max(waiting)
        span = hi - lo
        scores = [
            self.queue_weight * ((w - lo) / span if span else 0.0) + self.kv_weight * views[n].kv_usage
            for n, w in zip(self.node_ids, waiting)
        ]
        best = min(scores)
        tied = [n for n, s in zip(self.node_ids, scores) if s <= best + 1e-12]
        return tied[0] if len(tied) == 1 else self.rng.choice(tied)
