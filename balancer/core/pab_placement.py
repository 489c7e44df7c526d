"""PAB placement: send a request to the node with the largest Prefill Admission Budget (DESIGN section 3).

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
        self.cache_affinity = cache_affinity
        self._reject_reason = "no-budget"

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
        w = self.cache_affinity
        if w:
            return max(fitting, key=lambda n: (budget(n) - w * charges[n], -charges[n], -n))
        return max(fitting, key=lambda n: (budget(n), -charges[n], -n))
