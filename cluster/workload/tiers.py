"""SLO tiers for a workload: interactive and batch traffic on one cluster (``--slo-tier``).

A tier is ``NAME=SHARE:TTFT_S:TPOT_S``, for example ``interactive=0.5:1:0.05`` and
``batch=0.5:30:0.25``: that share of the requests (shares are weights, normalised over the
tiers) is held to those SLOs. Each request of any trace gets a tier by seed, independently of
its arrival and lengths, so a mix can be replayed exactly. Tiers are ranked by TTFT SLO, then
TPOT SLO, tightest first: the rank is the ``priority`` vLLM's priority scheduling reads (lower
first).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from node.core.request import SLO

#: Separates a tier's assignment stream from the other random choices of a seed.
_TIER_STREAM = 0x71E5


@dataclass(frozen=True)
class SLOTier:
    """One SLO class: its name, its share of the requests (a weight), and its SLO (tier and priority set)."""

    name: str
    share: float
    slo: SLO


def parse_slo_tier(spec: str) -> SLOTier:
    """``NAME=SHARE:TTFT_S:TPOT_S`` as a tier (priority 0 until ranked); ``ValueError`` naming the spec."""
    name, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or not name.strip() or len(parts) != 3:
        raise ValueError(f"SLO tier {spec!r}: expected NAME=SHARE:TTFT_S:TPOT_S, e.g. interactive=0.5:1:0.05")
    try:
        share, ttft, tpot = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"SLO tier {spec!r}: SHARE, TTFT_S and TPOT_S must be numbers") from None
    if not (math.isfinite(share) and share > 0):
        raise ValueError(f"SLO tier {spec!r}: SHARE must be > 0")
    try:
        slo = SLO(ttft, tpot, tier=name.strip())
    except ValueError as exc:
        raise ValueError(f"SLO tier {spec!r}: {exc}") from None
    return SLOTier(name.strip(), share, slo)


def ranked_slos(slos: Mapping[str, SLO]) -> dict[str, SLO]:
    """Each named SLO with its ``tier`` name and its ``priority`` rank, 0 the tightest (by TTFT,
    then TPOT; ties in the given order), in the given order. The one ranking of SLO classes: the
    simulator's ``--slo-tier`` and the serve config's ``slo_tiers``."""
    order = sorted(slos, key=lambda n: (slos[n].ttft_s, slos[n].tpot_s))
    return {name: replace(slo, tier=name, priority=order.index(name)) for name, slo in slos.items()}


def parse_slo_tiers(specs: Sequence[str]) -> tuple[SLOTier, ...]:
    """Every ``--slo-tier`` spec, ranked tightest first (their ``slo.priority`` is the rank).

    Raises ``ValueError`` for a malformed spec or a name given twice.
    """
    tiers = [parse_slo_tier(s) for s in specs]
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ValueError(f"SLO tiers {names}: each name once")
    slos = ranked_slos({t.name: t.slo for t in tiers})
    return tuple(replace(t, slo=slos[t.name]) for t in tiers)


def assign_tiers(count: int, tiers: Sequence[SLOTier], seed: int) -> list[SLOTier]:
    """A tier for each of ``count`` requests, drawn by share from a stream of ``seed``."""
    if not tiers:
        raise ValueError("assign_tiers needs at least one tier")
    rng = random.Random(seed * 0x10001 + _TIER_STREAM)
    return rng.choices(list(tiers), weights=[t.share for t in tiers], k=count)


@dataclass(frozen=True)
class SLOClasses:
    """A deployment's SLO classes as the ingress applies them (``ServeConfig.slo_tiers``).

    The ingress (``cluster.http.api``) and the simulator apply the same rules.
    ``tiers``: each class's targets (``SLO`` with its name and priority rank, 0 the
    tightest); ``floors``: the tightest targets a request of each class may ask for;
    ``default``: the class of a request that names none; ``hold_fraction``: the share of
    an engine's idle budget and seats a request of any class but the tightest must leave.
    """

    tiers: dict[str, SLO]
    floors: dict[str, SLO]
    default: str
    hold_fraction: float

    @property
    def tightest(self) -> SLO:
        """The tightest class's SLO (rank 0): what every node's PAB is computed for."""
        return min(self.tiers.values(), key=lambda s: s.priority)

    def held_fraction(self, slo: SLO) -> float:
        """What a request of ``slo``'s class must leave free: nothing for the tightest class."""
        return self.hold_fraction if slo.priority > 0 else 0.0

    def budget_tier(self, slo: SLO) -> str | None:
        """The engine budget a request of ``slo``'s class is placed by: its own class's when it is
        looser than the tightest (``NodeView.tier_pab_tokens``), else the engine's PAB (None)."""
        return slo.tier if slo.priority > 0 else None
