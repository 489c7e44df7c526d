"""PAB placement: send a request to the node with the largest Prefill Admission Budget (DESIGN section 3).

A request of ``L`` uncached prompt tokens goes to the node whose (debited)
view has the largest PAB among those with ``PAB >= L`` and a free slot (when
the node counts slots: ``node.core.pab``); that view is debited by ``L`` and one
slot at once. When no node qualifies the request is rejected at admission
(HTTP 429 with a Retry-After hint).

Variants, as knobs:

* ``fit="best"``: the node with the *smallest* PAB that still covers ``L``
  (best-fit), keeping large budgets free for large prompts;
* ``reject=False``: never reject; place on the largest budget even when it is
  short (PAB as a pure load signal, "PAB without rejection").
"""

from __future__ import annotations

import random
from typing import Sequence

from balancer.core.placement import PlacementPolicy, has_room, shortfall_tokens


class PABPlacement(PlacementPolicy):
    name = "pab"

    def __init__(
        self,
        node_ids: Sequence[int],
        *,
        fit: str = "largest",
        reject: bool = True,
        admission_cap_tokens: int | None = None,
        max_in_flight: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(node_ids, admission_cap_tokens=admission_cap_tokens, max_in_flight=max_in_flight, rng=rng)
        if fit not in ("largest", "best"):
            raise ValueError(f"fit must be 'largest' or 'best', got {fit!r}")
        self.fit = fit
        self.reject = reject
        self._reject_reason = "no-budget"

    def _pick(self, prompt_tokens: int, held_fraction: float, tier: str | None) -> int | None:
        views = self.views

        def budget(n: int) -> float:  # what the request may take there (less is short)
            return -shortfall_tokens(views[n], prompt_tokens, held_fraction, tier)

        fitting = [n for n in self.node_ids if has_room(views[n], prompt_tokens, held_fraction, tier)]
        if not fitting:
            if self.reject or held_fraction > 0:  # a held share is refused even by the never-reject variant
                return None
            return max(self.node_ids, key=lambda n: (budget(n), -n))
        if self.fit == "best":
            return min(fitting, key=lambda n: (budget(n), n))
        # Ties go to the lowest node id: deterministic, and debits spread a burst anyway.
        return max(fitting, key=lambda n: (budget(n), -n))
