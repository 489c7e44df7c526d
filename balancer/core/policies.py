"""Placement policies by name: ``pab``, ``round-robin``, ``power-of-two``, ``least-prefill``, ``queue-kv``,
``prefix-affinity``."""

from __future__ import annotations

import random
from typing import Any, Sequence

from balancer.core.baselines import LeastPrefill, PowerOfTwo, PrefixAffinity, QueueKV, RoundRobin
from balancer.core.pab_placement import PABPlacement
from balancer.core.placement import PlacementPolicy
from balancer.core.prefix import PrefixIndex

_REGISTRY: dict[str, type[PlacementPolicy]] = {
    "pab": PABPlacement,
    "round-robin": RoundRobin,
    "power-of-two": PowerOfTwo,
    "least-prefill": LeastPrefill,
    "queue-kv": QueueKV,
    "prefix-affinity": PrefixAffinity,
}

PLACEMENT_NAMES = tuple(_REGISTRY)


def make_placement(
    name: str,
    node_ids: Sequence[int],
    *,
    admission_cap: int | None = None,
    rng: random.Random | None = None,
    prefix_index: PrefixIndex | None = None,
    **knobs: Any,
) -> PlacementPolicy:
    """Build the placement policy ``name`` over ``node_ids``.

    ``admission_cap`` (tokens) adds the naive admission cap to any policy;
    ``prefix_index`` lets it charge each node net of its estimated prefix cache
    (``PlacementPolicy.choose``; ``prefix-affinity`` also routes by it);
    ``knobs`` are the policy's own keyword arguments (e.g. ``fit``, ``reject``
    for ``pab``). Unknown names or knobs raise ``ValueError``.
    """
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; choose one of {', '.join(PLACEMENT_NAMES)}") from None
    try:
        return cls(node_ids, admission_cap_tokens=admission_cap, rng=rng, prefix_index=prefix_index, **knobs)
    except TypeError as exc:
        raise ValueError(f"balancer {name!r}: {exc}") from None
