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
admission cap. They pick without looking at the prefix cache; given a
``prefix_index`` they are charged (cap, debit) net of it like every policy.

* ``PrefixAffinity``: the cache-aware routers of SGLang (``cache_aware``) and
  Ray Serve LLM (``PrefixCacheAffinityRouter``): while the load (requests in
  flight) is balanced, the node estimated to cache the longest prefix of the
  prompt when that is at least ``cache_threshold`` of it, else the node whose
  estimated cache holds the fewest blocks; when the load is unbalanced
  (``max - min > balance_abs_threshold`` and ``max > balance_rel_threshold *
  min``), the least-loaded node. Needs a ``prefix_index`` to see prefixes
  (without one it places by the fallback rules only).
"""

from __future__ import annotations

from typing import Mapping

from balancer.core.placement import PlacementPolicy


class RoundRobin(PlacementPolicy):
    name = "round-robin"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._next = 0

    def _pick(self, charges: Mapping[int, int], held_fraction: float, tier: str | None) -> int:
        node = self.node_ids[self._next % len(self.node_ids)]  # the node set may have shrunk since
        self._next = (self._next + 1) % len(self.node_ids)
        return node


class PowerOfTwo(PlacementPolicy):
    name = "power-of-two"

    def _pick(self, charges: Mapping[int, int], held_fraction: float, tier: str | None) -> int:
        if len(self.node_ids) == 1:
            return self.node_ids[0]
        first, second = self.rng.sample(self.node_ids, 2)
        return second if self.in_flight[second] < self.in_flight[first] else first


class LeastPrefill(PlacementPolicy):
    name = "least-prefill"

    def _pick(self, charges: Mapping[int, int], held_fraction: float, tier: str | None) -> int:
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

    def _pick(self, charges: Mapping[int, int], held_fraction: float, tier: str | None) -> int:
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


class PrefixAffinity(PlacementPolicy):
    """Route to the longest estimated cached prefix unless the load is unbalanced (see the module docstring).

    ``cache_threshold`` is the share of the prompt (0..1) a node must be
    estimated to cache to attract it; ``balance_abs_threshold`` (requests) and
    ``balance_rel_threshold`` (a ratio) define unbalanced load. The defaults are
    SGLang's router's (0.3, 64, 1.5). Ties go to the less loaded node, then the
    lowest id.
    """

    name = "prefix-affinity"

    def __init__(self, *args, cache_threshold: float = 0.3, balance_abs_threshold: int = 64,
                 balance_rel_threshold: float = 1.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= cache_threshold <= 1.0:
            raise ValueError(f"cache_threshold must be in [0, 1], got {cache_threshold!r}")
        if balance_abs_threshold < 0 or balance_rel_threshold < 1.0:
            raise ValueError("balance_abs_threshold must be >= 0 and balance_rel_threshold >= 1")
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self._prompt_tokens = 0

    def choose(self, request_id, prompt_tokens, held_fraction=0.0, tier=None, *, block_hashes=(), now_s=None):
        self._prompt_tokens = prompt_tokens  # the match rate's denominator
        return super().choose(request_id, prompt_tokens, held_fraction, tier, block_hashes=block_hashes, now_s=now_s)

    def _pick(self, charges: Mapping[int, int], held_fraction: float, tier: str | None) -> int:
        load = self.in_flight
        nodes = self.node_ids
        least_loaded = min(nodes, key=lambda n: (load[n], n))
        busiest = max(load[n] for n in nodes)
        idlest = load[least_loaded]
        if busiest - idlest > self.balance_abs_threshold and busiest > self.balance_rel_threshold * idlest:
            return least_loaded
        prompt = max(self._prompt_tokens, max(charges.values()), 1)
        best = min(nodes, key=lambda n: (charges[n], load[n], n))  # the longest cached prefix
        if (prompt - charges[best]) / prompt >= self.cache_threshold and charges[best] < prompt:
            return best
        index = self.prefix_index
        if index is None:
            return least_loaded
        return min(nodes, key=lambda n: (index.blocks_held(n), load[n], n))  # the most room to cache
