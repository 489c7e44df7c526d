"""PAB placement: send a request to the node with the largest Prefill Admission Budget (DESIGN section 3),
or, for a request with prefix-block hashes, to the node with room caching most of it (Locality, below).

A request that costs node ``n`` ``L_n`` prompt tokens (its prompt less what
``n`` is estimated to cache, ``PlacementPolicy.charges``; the whole prompt
without a prefix index) goes to the node whose (debited) view has the largest
budget left after it, ``PAB_n - L_n``, among those with ``PAB_n >= L_n`` and a
free slot (when the node counts slots: ``node.core.pab``); equal budgets go to
the node caching more of the prompt, then the lowest id. That view is debited
by ``L_n`` and one slot at once. When no node qualifies the request is rejected
at admission (HTTP 429 with a Retry-After hint).

Variants, as knobs:

* ``fit="best"``: the node with the *smallest* PAB that still covers ``L``
  (best-fit), keeping large budgets free for large prompts;
* ``reject=False``: never reject; place on the largest budget even when it is
  short (PAB as a pure load signal, "PAB without rejection");
* ``cache_affinity=w`` (>= 0): among the nodes with room, rank by
  ``PAB_n - (1 + w) * L_n`` instead: each token a node is estimated to cache
  counts ``w`` more than the budget it saves (``w = 0``: the largest budget
  left; a very large ``w``: the node computing the least, budgets breaking ties).
  Used only where the locality rule below is off (``affinity_slack=None``) or the
  request has no block hashes.

Locality (``fit="largest"``, a request with block hashes and a ``PrefixIndex``;
requests without hashes, or a policy without an index, take the budget rule
above unchanged). Admission is unchanged: only nodes with room are candidates
and the request is refused when there is none. Among them:

* ``fresh_share=s`` (default 0.3; 0 or None: off): a *fresh* prompt, of which
  no node with room is estimated to cache at least the share ``s`` (a new
  conversation), goes to the node with room whose estimated cache
  (``PrefixIndex.blocks_held``) holds the fewest blocks, then the largest
  budget left. The blocks a node holds count the conversations living there,
  whose later turns are its load to come; the largest budget only sees the load
  of now. (SGLang's and Ray Serve's cache-aware routers place prompts below
  their match threshold this way too.)
* ``affinity_slack=k`` (default 64 requests; None: off): otherwise the node
  computing the least of the prompt (the longest estimated cached prefix) among
  the nodes with room that hold at most ``k`` more requests in flight than the
  least loaded of them, then the fewest in flight, the largest budget left, the
  lowest id.

Measured (``bench/results/PREFIX.md``, 8 FairBatching nodes, multi-turn
conversations, seed 0 at 51.3 req/s): attainment 0.669 with the budget rule,
0.878 with ``cache_affinity=2``, 0.80-0.84 with the locality rule but no
``fresh_share``, 0.66 with ``fresh_share`` but the budget rule, 0.923 with both
defaults (prefix-affinity with the admission cap: 0.901); a tighter slack (16,
4) evens the in-flight counts but loses hits and attainment. Capacity over 3
seeds: 1.00-1.02x prefix-affinity with the cap, 1.09-1.11x the budget rule.
"""

from __future__ import annotations

import random
from typing import Any, Mapping, Sequence

from balancer.core.placement import PlacementPolicy, has_room, shortfall_tokens


class PABPlacement(PlacementPolicy):
    name = "pab"

    def __init__(
        self,
        node_ids: Sequence[int],
        *,
        fit: str = "largest",
        reject: bool = True,
        cache_affinity: float = 0.0,
        affinity_slack: int | None = 64,
        fresh_share: float | None = 0.3,
        admission_cap_tokens: int | None = None,
        max_in_flight: int | None = None,
        rng: random.Random | None = None,
        **base: Any,
    ) -> None:
        super().__init__(node_ids, admission_cap_tokens=admission_cap_tokens, max_in_flight=max_in_flight, rng=rng,
                         **base)
        if fit not in ("largest", "best"):
            raise ValueError(f"fit must be 'largest' or 'best', got {fit!r}")
        if not cache_affinity >= 0:
            raise ValueError(f"cache_affinity must be >= 0, got {cache_affinity!r}")
        self.fit = fit
        self.reject = reject
        if affinity_slack is not None and affinity_slack < 0:
            raise ValueError(f"affinity_slack must be >= 0 or None, got {affinity_slack!r}")
        self.cache_affinity = cache_affinity
        if fresh_share is not None and not 0.0 <= fresh_share <= 1.0:
            raise ValueError(f"fresh_share must be in [0, 1] or None, got {fresh_share!r}")
        self.affinity_slack = affinity_slack
        self.fresh_share = fresh_share
        self._prompt_tokens = 0
        self._cache_aware = False  # whether the request being placed is charged net of a prefix index
        self._reject_reason = "no-budget"

    def choose(self, request_id, prompt_tokens, held_fraction=0.0, tier=None, *, block_hashes=(), now_s=None):
        self._cache_aware = self.prefix_index is not None and bool(block_hashes)
        self._prompt_tokens = prompt_tokens
        return super().choose(request_id, prompt_tokens, held_fraction, tier, block_hashes=block_hashes, now_s=now_s)

    def _pick(self, charges: Mapping[int, int], held_fraction: float, tier: str | None) -> int | None:
        views = self.views

        def budget(n: int) -> float:  # what the request leaves there (less than 0: short)
            return -shortfall_tokens(views[n], charges[n], held_fraction, tier)

        fitting = [n for n in self.node_ids if has_room(views[n], charges[n], held_fraction, tier)]
        if not fitting:
            if self.reject or held_fraction > 0:  # a held share is refused even by the never-reject variant
                return None
            return max(self.node_ids, key=lambda n: (budget(n), -charges[n], -n))
        if self.fit == "best":
            return min(fitting, key=lambda n: (budget(n), charges[n], n))
        # Equal budgets: the node caching more of the prompt, then the lowest node id (deterministic,
        # and debits spread a burst anyway).
        if self.fresh_share and self._cache_aware:
            prompt = max(self._prompt_tokens, 1)
            if max(prompt - charges[n] for n in fitting) < self.fresh_share * prompt:
                # A fresh prompt (a new conversation): the node whose estimated cache holds the fewest
                # blocks, i.e. the fewest live conversations, whose later turns are the load to come.
                blocks = self.prefix_index.blocks_held
                return min(fitting, key=lambda n: (blocks(n), -budget(n), n))
        slack = self.affinity_slack
        if slack is not None and self._cache_aware:
            load = self.in_flight
            least = min(load[n] for n in fitting)
            near = [n for n in fitting if load[n] <= least + slack]
            return min(near, key=lambda n: (charges[n], load[n], -budget(n), n))
        w = self.cache_affinity
        if w:
            return max(fitting, key=lambda n: (budget(n) - w * charges[n], -charges[n], -n))
        return max(fitting, key=lambda n: (budget(n), -charges[n], -n))
