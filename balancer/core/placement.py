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

In-flight cap: ``max_in_flight`` rejects a request when the chosen node
already holds that many requests from this balancer (a static concurrency
limit, the simplest admission control there is).

Debits in transit: a report measured before a placement reached the node does
not include it. Each placement's debit is kept, keyed by request id, and
re-applied on top of every fresh report of its node until a report lists the
request among the ones the node has received (``NodeView.received_ids``), so a
report never makes a burst in transit vanish and a request is never counted
twice. A node that sends no ids gets the old behaviour: a report replaces the
view. ``release(request_id)`` ends a placement (completion, error, cancel,
client disconnect); ``move`` re-places one whose node failed, keeping its
admission.

Prefix cache (``balancer.core.prefix``): given a ``PrefixIndex`` and a request's
block hashes, a node's charge for the request is the prompt tokens it must
actually compute, ``prompt_tokens - prefix_index.cached_tokens(node, ...)``:
budgets are compared net of each node's estimated cache hit, the admission cap
and the debit use the chosen node's charge, and the prompt's blocks are
recorded on that node. Without an index or hashes every node is charged the
whole prompt.

Shedding looser SLO classes (``tier_shed_s``): once a request of the tightest
class (``tier`` None) is refused, every request of a looser class (``tier`` set)
is refused for ``tier_shed_s`` seconds of the caller's clock (``choose(now_s=)``),
whatever budget it would find: under overload batch traffic is shed before an
interactive request is refused again, and it comes back only after the tightest
class has gone ``tier_shed_s`` without a refusal. The held share
(``has_room``'s ``held_fraction``) keeps room for interactive prompts as large as
the share; this rule covers the rest, whatever the prompts' sizes.

Retry-After (``Decision.retry_after_s``): the predicted time until the best
node's budget covers the request, ``(L - PAB) / recovery_tps`` from each node's
report, clamped to [``RETRY_AFTER_MIN_S``, ``RETRY_AFTER_MAX_S``].
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping, Optional, Sequence

from balancer.core.prefix import PrefixIndex
from node.core.attainment import percentile

#: Bounds of the Retry-After a rejection suggests, seconds.
RETRY_AFTER_MIN_S = 1.0
RETRY_AFTER_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class NodeView:
    """What one node last reported about itself.

    ``pab_tokens`` is its Prefill Admission Budget, ``in_flight`` the requests it
    holds (queued or running), ``queued_prefill_tokens`` the prompt tokens it has
    still to prefill, ``kv_usage`` the used fraction of its KV cache (0..1),
    ``waiting`` the requests that have not started prefill, ``reported_at_s``
    the node's clock when it measured all this. ``recovery_tps`` (how fast
    its budget grows back with nothing new admitted) gives the Retry-After;
    ``prefill_rate_tps`` is PAB's R; ``kv_capacity_tokens`` lets the balancer
    debit KV usage locally. Each may be 0 when unknown. ``slots_free`` is how
    many more requests the node can carry (decode time, seats; ``None``: no
    such limit) and ``slot_wait_s`` how soon one frees. ``received_ids`` are
    the ids of requests the node received recently: at least every one since
    its previous report (``None``: the node does not say). ``idle_pab_tokens``
    is the budget the node would have idle (``node.core.pab.idle_pab_tokens``):
    the scale of the share a tier's requests must leave (``has_room``).
    ``tier_pab_tokens`` are the budgets of looser SLO tiers by tier name, each
    over that tier's own TTFT (``pab_tokens`` is the tightest tier's; None: the
    node budgets one SLO). ``max_num_seqs`` is the node's sequence seats (None:
    unknown), of which a held share is kept free too. ``kv_pab_tokens`` is the
    budget's KV limit (``node.core.pab.PABReport.kv_limited_tokens``; None: not
    reported), of which a held share of ``kv_capacity_tokens`` is kept too.
    ``budget_share`` is the share of the node's budgets this view may spend (1 as
    reported; ``1 / routers`` after ``shared``), which scales that held share of KV.
    ``expected_output_tokens`` is the output the node expects of a new request (PAB's
    ``E``), which a placement takes from the KV limit beside its prompt.
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
    recovery_tps: float = 0.0
    slots_free: float | None = None
    slot_wait_s: float = 0.0
    received_ids: frozenset[str] | None = None
    idle_pab_tokens: float = 0.0
    tier_pab_tokens: Mapping[str, float] | None = None
    max_num_seqs: int | None = None
    kv_pab_tokens: float | None = None
    budget_share: float = 1.0
    expected_output_tokens: float = 0.0

    def debited(self, prompt_tokens: int) -> NodeView:
        """This view after one more request of ``prompt_tokens`` uncached prompt tokens is placed on the node.

        PAB ``-= L`` (every tier's), its KV limit ``-= L + E`` (the request's KV grows by its output too),
        queued prefill ``+= L``, waiting ``+= 1``, one slot fewer, KV usage up by ``L`` over its capacity
        (capped at 1) when the capacity is known. The balancer
        keeps such debited views between reports (DESIGN section 3: debits in transit).
        """
        kv_usage = self.kv_usage
        if self.kv_capacity_tokens > 0:
            kv_usage = min(1.0, kv_usage + prompt_tokens / self.kv_capacity_tokens)
        tiers = self.tier_pab_tokens
        return replace(
            self,
            pab_tokens=self.pab_tokens - prompt_tokens,
            tier_pab_tokens=None if tiers is None else {k: v - prompt_tokens for k, v in tiers.items()},
            queued_prefill_tokens=self.queued_prefill_tokens + prompt_tokens,
            waiting=self.waiting + 1,
            slots_free=None if self.slots_free is None else self.slots_free - 1,
            kv_usage=kv_usage,
            kv_pab_tokens=(None if self.kv_pab_tokens is None
                           else self.kv_pab_tokens - prompt_tokens - self.expected_output_tokens),
        )

    def shared(self, routers: int) -> NodeView:
        """This view as one of ``routers`` balancers that place on the node independently may spend it.

        Each budget (``pab_tokens``, every ``tier_pab_tokens``, ``idle_pab_tokens``, the KV limit
        ``kv_pab_tokens``) is divided by ``routers`` while positive; a deficit is not divided (every
        balancer sees it whole, so none promises an early Retry-After). ``budget_share`` becomes
        ``1 / routers``, so each keeps its part of the KV held for the tightest class. Slots, KV
        usage and rates are left as reported.
        Raises ``ValueError`` for fewer than one router.
        """
        if routers < 1:
            raise ValueError(f"routers must be >= 1, got {routers!r}")
        if routers == 1:
            return self

        def share(tokens: float) -> float:
            return tokens / routers if tokens > 0 else tokens

        tiers = self.tier_pab_tokens
        return replace(
            self,
            pab_tokens=share(self.pab_tokens),
            tier_pab_tokens=None if tiers is None else {k: share(v) for k, v in tiers.items()},
            idle_pab_tokens=share(self.idle_pab_tokens),
            kv_pab_tokens=None if self.kv_pab_tokens is None else share(self.kv_pab_tokens),
            budget_share=self.budget_share / routers,
        )


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """A request as the balancer places it: its id, what admitting it charges, and its first deadline.

    ``prompt_tokens`` is the prompt work it brings, tokens (every sample's prompt: ``n`` x
    the rendered prompt); ``arrival_s`` its arrival stamp (``time.time()`` seconds) and
    ``ttft_slo_s`` its TTFT SLO, seconds, by which a host may refuse a request that already
    waited too long to be served in time. With SLO classes: ``slo_class`` names its class,
    ``tier`` the looser class whose budget places it (None: the node's PAB, the tightest
    class's) and ``held_fraction`` the share it must leave free (``PlacementPolicy.choose``).
    ``block_hashes`` are the chained hashes of its prompt's full KV blocks
    (``balancer.core.prefix.prompt_block_hashes``; ``()``: charge every prompt token).
    """

    request_id: str
    prompt_tokens: int
    arrival_s: float
    ttft_slo_s: float
    slo_class: str = field(default="", kw_only=True)
    tier: str | None = field(default=None, kw_only=True)
    held_fraction: float = field(default=0.0, kw_only=True)
    block_hashes: tuple[int, ...] = field(default=(), kw_only=True)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes: ``node_id``, or ``None`` for a rejection (HTTP 429).

    ``reason`` names why (the policy, or what made it reject); ``retry_after_s``
    is a hint for the client on rejection. ``charged_tokens`` is what the chosen
    node's budget was debited, prompt tokens net of its estimated prefix-cache
    hit (the whole prompt without a ``PrefixIndex``); None on rejection.
    """

    node_id: int | None
    reason: str
    retry_after_s: float | None = None
    charged_tokens: int | None = None

    @property
    def rejected(self) -> bool:
        return self.node_id is None


@dataclass(slots=True)
class Placement:
    """One placed request: where it went, what it was charged there (``prompt_tokens``: its prompt
    net of the node's estimated cache hit), whether its node has acknowledged it, and its whole
    prompt and block hashes (to charge it again on another node, ``move``)."""

    node_id: int
    prompt_tokens: int
    acknowledged: bool = False
    request_prompt_tokens: int = 0
    block_hashes: tuple[int, ...] = ()


def view_age_summary(ages: Iterable[float]) -> Optional[dict[str, float]]:
    """``{"p50", "p90", "mean", "decisions"}`` of the views' ages at decisions (seconds;
    ``PlacementPolicy.view_age_s``), None for none: what a live balancer reports (``fairbatching
    status``) and the simulator beside it."""
    ages = list(ages)
    if not ages:
        return None
    return {"p50": percentile(ages, 50), "p90": percentile(ages, 90), "mean": sum(ages) / len(ages),
            "decisions": len(ages)}


def idle_prefill_tokens(ttft_slo_s: float, a_s: float, b_s_per_token: float) -> int:
    """Prompt tokens an idle node prefills within the TTFT SLO: the naive admission cap."""
    if b_s_per_token <= 0:
        raise ValueError(f"b_s_per_token must be > 0, got {b_s_per_token!r}")
    return max(0, int((ttft_slo_s - a_s) / b_s_per_token))


class PlacementPolicy:
    """Base of every placement policy.

    Subclasses implement ``_pick(charges, held_fraction, tier)`` returning a node
    id (or ``None`` to reject with their own reason); ``charges`` maps each node
    to the prompt tokens the request would cost it (net of its estimated prefix
    cache). The base keeps the views, the placements by request id (the balancer
    sees every dispatch and release, so in-flight counts need no report), the
    debits in transit, the admission caps and the optional ``prefix_index``
    (``balancer.core.prefix.PrefixIndex``: what each node is estimated to cache).
    """

    name = "placement"

    def __init__(
        self,
        node_ids: Sequence[int],
        *,
        admission_cap_tokens: int | None = None,
        max_in_flight: int | None = None,
        rng: random.Random | None = None,
        prefix_index: PrefixIndex | None = None,
        tier_shed_s: float | None = None,
    ) -> None:
        if not node_ids:
            raise ValueError("a balancer needs at least one node")
        if len(set(node_ids)) != len(node_ids):
            raise ValueError(f"node ids must be distinct, got {list(node_ids)}")
        if admission_cap_tokens is not None and admission_cap_tokens < 0:
            raise ValueError(f"admission_cap_tokens must be >= 0, got {admission_cap_tokens!r}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight!r}")
        if tier_shed_s is not None and not (math.isfinite(tier_shed_s) and tier_shed_s >= 0):
            raise ValueError(f"tier_shed_s must be a finite number >= 0 or None, got {tier_shed_s!r}")
        self.tier_shed_s = tier_shed_s or None
        self.tightest_refused_s: float | None = None  # when a request of the tightest class was last refused
        self.node_ids = list(node_ids)
        self.admission_cap_tokens = admission_cap_tokens
        self.max_in_flight = max_in_flight
        self.rng = rng if rng is not None else random.Random(0)
        self.prefix_index = prefix_index
        # The last report of each node with the debits it has not seen applied (in_flight: see below).
        self.views: dict[int, NodeView] = {n: NodeView(n) for n in self.node_ids}
        self.in_flight: dict[int, int] = {n: 0 for n in self.node_ids}
        self.placements: dict[str, Placement] = {}
        self._in_transit: dict[int, dict[str, int]] = {n: {} for n in self.node_ids}  # unacknowledged debits
        self._reject_reason = "rejected"
        self.routers = 1  # balancers placing on these nodes independently (set_routers)

    def set_routers(self, routers: int) -> None:
        """How many balancers (ingress processes) place on these nodes, each from its own view.

        Between two reports of a node each spends at most its share of the node's budgets
        (``NodeView.shared``): without it, ``routers`` balancers that each saw the whole budget
        would together admit up to ``routers`` times it in one report interval (a burst split
        over two ingress replicas overfilled the engines live, ``bench/results/TIERS.md``). The
        first placement on a node after its report is still judged on the whole budget, so a
        prompt larger than the share is not refused forever; the share applies from the next.
        Raises ``ValueError`` for fewer than one.
        """
        if routers < 1:
            raise ValueError(f"routers must be >= 1, got {routers!r}")
        self.routers = routers

    # -- reports and bookkeeping -------------------------------------------------

    def update(self, view: NodeView) -> None:
        """A fresh report replaces the local view of that node; debits it has not seen are re-applied.

        A report older than the one already held is ignored, so reports
        delivered out of order never roll a view back.
        """
        held = self.views.get(view.node_id)
        if held is None:
            raise ValueError(f"unknown node {view.node_id!r}; nodes are {self.node_ids}")
        if view.reported_at_s < held.reported_at_s:
            return
        local = view  # kept as reported (its received_ids are read here, once)
        transit = self._in_transit[view.node_id]
        if view.received_ids is None:
            self._acknowledge(transit, list(transit))
        elif transit:
            self._acknowledge(transit, [rid for rid in view.received_ids if rid in transit])
            if transit:  # this balancer placed here since: from now on it spends only its share
                local = local.shared(self.routers)
            for prompt_tokens in transit.values():  # placements the report has not seen yet
                local = local.debited(prompt_tokens)
        self.views[view.node_id] = local

    def set_nodes(self, node_ids: Sequence[int]) -> None:
        """Change the nodes new requests may go to (nodes joined or left; at least one).

        A new node starts with an empty view; placements on a node that left
        stay until released, so its in-flight count is never lost.
        """
        if not node_ids or len(set(node_ids)) != len(node_ids):
            raise ValueError(f"node ids must be distinct and at least one, got {list(node_ids)}")
        for n in node_ids:
            if n not in self.views:
                self.views[n] = NodeView(n)
                self.in_flight[n] = 0
                self._in_transit[n] = {}
        self.node_ids = list(node_ids)

    def _acknowledge(self, transit: dict[str, int], request_ids: Iterable[str]) -> None:
        for rid in request_ids:
            del transit[rid]
            placed = self.placements.get(rid)
            if placed is not None:
                placed.acknowledged = True

    def release(self, request_id: str) -> bool:
        """The request finished, failed, was cancelled or its client left; False if it was not placed."""
        placed = self.placements.pop(request_id, None)
        if placed is None:
            return False
        self.in_flight[placed.node_id] -= 1
        self._in_transit[placed.node_id].pop(request_id, None)
        return True

    def move(self, request_id: str, exclude: Iterable[int] = ()) -> int | None:
        """Re-place an admitted request whose node failed, keeping its admission (no budget check).

        Goes to the node with the largest budget among the others, or ``None``
        when no other node exists; the debit moves with it, charged again on the
        new node net of its estimated prefix cache when the request came with
        block hashes (and its blocks are recorded there). Raises ``KeyError``
        for a request that is not placed.
        """
        placed = self.placements[request_id]
        banned = set(exclude) | {placed.node_id}
        others = [n for n in self.node_ids if n not in banned]
        if not others:
            return None
        target = max(others, key=lambda n: (self.views[n].pab_tokens, -self.in_flight[n], -n))
        self.release(request_id)
        charge = placed.prompt_tokens
        if self.prefix_index is not None and placed.block_hashes:
            charge = self._charge(target, placed.request_prompt_tokens, placed.block_hashes)
            self.prefix_index.insert(target, placed.block_hashes)
        self._debit(target, charge, request_id, placed.request_prompt_tokens, placed.block_hashes)
        return target

    def view(self, node_id: int) -> NodeView:
        """The balancer's current view of a node, debits included (read-only copy)."""
        return replace(self.views[node_id], in_flight=self.in_flight[node_id])

    def in_transit(self, node_id: int) -> int:
        """Placements on ``node_id`` that no report of it has acknowledged yet."""
        return len(self._in_transit[node_id])

    def view_age_s(self, now_s: float) -> float | None:
        """How old the views a decision at ``now_s`` goes by are: the mean over the nodes of ``now_s``
        minus their ``reported_at_s`` (on the nodes' clock), seconds; None before any node reported.
        The time from a node measuring its budget to a balancer deciding on it: its report interval,
        the hops and the balancer's poll (``bench/results/SIMULATION.md``, "What the engines drain against
        what they measure")."""
        ages = [now_s - v.reported_at_s for n in self.node_ids if (v := self.views[n]).reported_at_s > 0]
        return sum(ages) / len(ages) if ages else None

    # -- the decision ------------------------------------------------------------

    def charges(self, prompt_tokens: int, block_hashes: Sequence[int] = ()) -> dict[int, int]:
        """What a request of ``prompt_tokens`` prompt tokens would cost each node, prompt tokens:
        the whole prompt less the node's estimated cache hit (``PrefixIndex.cached_tokens``);
        the whole prompt on every node without an index or hashes."""
        if self.prefix_index is None or not block_hashes:
            return {n: prompt_tokens for n in self.node_ids}
        return {n: self._charge(n, prompt_tokens, block_hashes) for n in self.node_ids}

    def _charge(self, node: int, prompt_tokens: int, block_hashes: Sequence[int]) -> int:
        return prompt_tokens - self.prefix_index.cached_tokens(node, block_hashes, prompt_tokens)

    def choose(self, request_id: str, prompt_tokens: int, held_fraction: float = 0.0,
               tier: str | None = None, *, block_hashes: Sequence[int] = (), now_s: float | None = None) -> Decision:
        """Place one request of ``prompt_tokens`` prompt tokens, or reject it.

        ``block_hashes`` are the chained hashes of the prompt's full KV blocks
        (``balancer.core.prefix.prompt_block_hashes``, or a trace's ``hash_ids``).
        With a ``prefix_index`` and hashes, each node is charged only the tokens it
        must compute, ``prompt_tokens - prefix_index.cached_tokens(node, ...)``
        (``charges``): the budget checks, the pick, the admission cap and the
        debit use that charge, and on placement the hashes are recorded for the
        chosen node. Without either, every node is charged the whole prompt.

        ``tier`` names the request's SLO tier: a node's budget for it is that
        tier's (``NodeView.tier_pab_tokens``), else its ``pab_tokens``.
        ``held_fraction`` (in [0, 1)) is the share of each node's idle budget
        the request must leave to the tightest tier (the host decides whose
        requests are held back; ``has_room``). Policies that do not budget
        ignore both. The Retry-After of a rejection counts both.

        ``now_s`` (seconds, any monotonic clock of the caller's) dates the
        decision for ``tier_shed_s``: a request with a ``tier`` within
        ``tier_shed_s`` of the last refusal of one without is refused with
        reason ``shed-looser-tier`` and a Retry-After of at least the rest of
        that window. Without ``now_s`` the rule is off.

        On placement the chosen node's local view is debited at once by the
        charge ``C``: PAB ``-= C``, queued prefill ``+= C``, waiting and in-flight
        ``+= 1``, one slot, KV usage by ``C`` over its capacity
        (``Decision.charged_tokens`` is ``C``). A request id already placed keeps
        its placement (a retry of an admitted request is never refused).
        Raises ``ValueError`` for a prompt of fewer than one token or a held fraction outside [0, 1).
        """
        if prompt_tokens < 1:
            raise ValueError(f"request {request_id!r}: prompt_tokens must be >= 1, got {prompt_tokens!r}")
        if not 0.0 <= held_fraction < 1.0:
            raise ValueError(f"request {request_id!r}: held_fraction must be in [0, 1), got {held_fraction!r}")
        held = self.placements.get(request_id)
        if held is not None:
            return Decision(held.node_id, self.name, charged_tokens=held.prompt_tokens)
        charges = self.charges(prompt_tokens, block_hashes)
        shed_left_s = self.shed_left_s(tier, now_s)
        if shed_left_s > 0:
            retry = max(self._retry_after_s(charges, held_fraction, tier), min(shed_left_s, RETRY_AFTER_MAX_S))
            return Decision(None, "shed-looser-tier", retry)
        decision = self._place(charges, request_id, prompt_tokens, held_fraction, tier, tuple(block_hashes))
        if decision.rejected and tier is None and now_s is not None:
            self.tightest_refused(now_s)
        return decision

    def tightest_refused(self, now_s: float) -> None:
        """A request of the tightest class was refused at ``now_s`` (by ``choose``, or by the host
        before placement): the looser classes are shed for ``tier_shed_s`` from then."""
        self.tightest_refused_s = now_s

    def shed_left_s(self, tier: str | None, now_s: float | None) -> float:
        """Seconds left of the window in which a request of a looser class (``tier`` set) is shed
        (``tier_shed_s``; <= 0: not shed)."""
        if tier is None or now_s is None or self.tier_shed_s is None or self.tightest_refused_s is None:
            return 0.0
        return self.tightest_refused_s + self.tier_shed_s - now_s

    def _place(self, charges: Mapping[int, int], request_id: str, prompt_tokens: int, held_fraction: float,
               tier: str | None, block_hashes: tuple[int, ...]) -> Decision:
        node = self._pick(charges, held_fraction, tier)
        if node is None:
            reason = self._reject_reason if held_fraction == 0 else self._reject_reason + "-held"
            return Decision(None, reason, self._retry_after_s(charges, held_fraction, tier))
        charge = charges[node]
        cap = self.admission_cap_tokens
        if cap is not None and self.views[node].queued_prefill_tokens + charge > cap:
            return Decision(None, "admission-cap", self._retry_after_s(charges))
        if self.max_in_flight is not None and self.in_flight[node] >= self.max_in_flight:
            return Decision(None, "in-flight-cap", self._retry_after_s(charges))
        if self.prefix_index is not None and block_hashes:
            self.prefix_index.insert(node, block_hashes)
        self._debit(node, charge, request_id, prompt_tokens, block_hashes)
        return Decision(node, self.name, charged_tokens=charge)

    def _pick(self, charges: Mapping[int, int], held_fraction: float, tier: str | None) -> int | None:
        """The node for a request that would cost node ``n`` ``charges[n]`` prompt tokens, or None to reject."""
        raise NotImplementedError

    def _debit(self, node: int, prompt_tokens: int, request_id: str, request_prompt_tokens: int = 0,
               block_hashes: tuple[int, ...] = ()) -> None:
        view = self.views[node]
        if not self._in_transit[node]:  # the first placement since the node's report (set_routers)
            view = view.shared(self.routers)
        self.views[node] = view.debited(prompt_tokens)
        self.in_flight[node] += 1
        self.placements[request_id] = Placement(node, prompt_tokens, False, request_prompt_tokens or prompt_tokens,
                                                block_hashes)
        self._in_transit[node][request_id] = prompt_tokens

    def _retry_after_s(self, charges: Mapping[int, int], held_fraction: float = 0.0, tier: str | None = None) -> float:
        """Seconds until some node's budget covers the request (its charge there) at its recovery rate, in [1, 30]."""
        return min(
            retry_after_of_views(charges[n], (self.views[n],), held_fraction, tier) for n in self.node_ids
        )


def shortfall_tokens(view: NodeView, prompt_tokens: int, held_fraction: float = 0.0, tier: str | None = None) -> float:
    """How many prompt tokens a (debited) view's budget lacks for a request (<= 0: it has room).

    Every request's prompt counts against ``pab_tokens`` (the tightest tier's budget: a prompt
    due later still takes prefill time from the node). A request of a looser tier must also
    leave ``held_fraction`` of the node's idle budget (``idle_pab_tokens``) in it, and fit its
    own tier's budget (``view.tier_pab_tokens[tier]``, over that tier's own TTFT) when the node
    reports one: ``max(L + h * idle - PAB, L - PAB_tier)``. Where the node reports its budget's KV
    limit (``view.kv_pab_tokens``) and KV capacity, such a request must also leave ``h`` of the KV
    capacity (its ``budget_share`` of it) in that limit: ``L + h * kv_capacity * share - PAB_kv``.
    (Paced decodes of a loose tier hold KV for long; without this share KV runs out for both tiers
    alike.)

    So when a request of the tightest tier with a prompt of ``L_i`` is refused (``PAB < L_i``),
    every looser request with ``L + h * idle >= L_i`` is refused too: with a held share above
    the largest prompts, the looser tiers are shed entirely before the tightest one loses a
    request (``cluster.config.ServeConfig.tier_hold_fraction``).
    """
    short = prompt_tokens + held_fraction * view.idle_pab_tokens - view.pab_tokens
    tiers = view.tier_pab_tokens
    if tier is not None and tiers is not None and tier in tiers:
        short = max(short, prompt_tokens - tiers[tier])
    if held_fraction > 0 and view.kv_pab_tokens is not None and view.kv_capacity_tokens > 0:
        held_kv = held_fraction * view.kv_capacity_tokens * view.budget_share
        short = max(short, prompt_tokens + held_kv - view.kv_pab_tokens)
    return short


def slots_needed(view: NodeView, held_fraction: float = 0.0) -> float:
    """Free slots a request needs on a view: one, and with ``held_fraction`` that share of the
    node's seats (``max_num_seqs``) kept free for the tightest tier besides."""
    return 1.0 + (held_fraction * view.max_num_seqs if view.max_num_seqs else 0.0)


def has_room(view: NodeView, prompt_tokens: int, held_fraction: float = 0.0, tier: str | None = None) -> bool:
    """Whether a (debited) view covers a request: budget for its prompt (``shortfall_tokens`` <= 0)
    and, where counted, a free slot (``slots_needed``: more for a request held back)."""
    return (shortfall_tokens(view, prompt_tokens, held_fraction, tier) <= 0
            and (view.slots_free is None or view.slots_free >= slots_needed(view, held_fraction)))


def retry_after_of_views(prompt_tokens: int, views: Iterable[NodeView], held_fraction: float = 0.0,
                         tier: str | None = None) -> float:
    """``retry_after_s`` over (debited) node views: each its shortfall (``shortfall_tokens``),
    recovery rate and, when it has no free slot, the wait for one."""
    return retry_after_s(prompt_tokens, (
        (prompt_tokens - shortfall_tokens(v, prompt_tokens, held_fraction, tier), v.recovery_tps,
         v.slot_wait_s if v.slots_free is not None and v.slots_free < slots_needed(v, held_fraction) else 0.0)
        for v in views))


def retry_after_s(prompt_tokens: int, budgets: Iterable[tuple[float, float, float]]) -> float:
    """Predicted wait until one of the ``(pab_tokens, recovery_tps, slot_wait_s)`` budgets covers ``prompt_tokens``.

    A node's wait is the longer of its budget's (``(L - PAB) / recovery_tps``)
    and its slot's (``slot_wait_s``, 0 when it has one free). A budget that
    already covers the prompt (a request refused by a cap) and a budget that
    does not grow back give the bounds: the result is clamped to
    [``RETRY_AFTER_MIN_S``, ``RETRY_AFTER_MAX_S``].
    """
    best = math.inf
    for pab, recovery, slot_wait in budgets:
        short = prompt_tokens - pab
        if short <= 0:
            best = min(best, slot_wait)
        elif recovery > 0:
            best = min(best, max(short / recovery, slot_wait))
    return min(max(best, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)
