"""Admission and placement in the caller's own process: the local balancer.

``LocalBalancer`` holds the balancer's placement policy (``balancer.core.policies``,
the code the simulator runs) over the engine replicas, with a view refreshed in
the background: a thread polls the PAB registry's ``views()`` every
``refresh_interval_s`` (the replicas' report interval). Admitting, placing,
debiting and rejecting a request are local calls under a lock: no remote call
sits on a request's path, so a refusal costs microseconds and a 429 comes back
at once. One instance per engine deployment per process
(``local_balancer(...)``): the ingress admits a request with it before calling
the engine, and the router, in the same process, sends the call where it was
placed.

Accounting (``balancer.core.placement``): each placement's debit is keyed by
request id and survives fresh reports until the replica lists the request as
received; ``release(request_id)`` ends it on completion, error, cancel or client
disconnect (the ingress calls it in a ``finally``; the router's
``on_request_completed`` releases only what the router admitted itself, a
direct call that did not pass the ingress). A request Serve retries (its
replica died) keeps its admission and moves to another replica.
When the registry is unreachable (restarting), the replicas' routing stats,
which Serve polls in the background, keep the view fresh; a restarted registry
is rebuilt by the next round of reports.

The Serve request router (``balancer.serve.router``) is a thin hook over this
module: Serve pickles a router's module by value, so anything shared between
the router and the ingress must live here, imported by reference.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Optional

from balancer.core.admission_queue import AdmissionQueue
from balancer.core.placement import (RETRY_AFTER_MAX_S, RETRY_AFTER_MIN_S, Decision, NodeView, PlacementPolicy,
                                     has_room, retry_after_of_views, view_age_summary)
from balancer.core.policies import make_placement
from balancer.core.prefix import PrefixIndex, prompt_block_hashes
from balancer.serve.pab_registry import RouterPoll, find_registry
from node.core.attainment import percentile

logger = logging.getLogger("ray.serve")

@dataclass(frozen=True)
class BalancerSettings:
    """How a deployment's requests are balanced: the placement policy, its caps and the refresh.

    Plain JSON-able data (``to_dict`` / ``from_dict``): Serve passes it to the router as JSON.
    """

    balancer: str = "pab"
    knobs: dict[str, Any] = field(default_factory=dict)  # the policy's own keyword arguments
    admission_cap: Optional[int] = None  # naive cap on queued prompt tokens per node
    max_in_flight: Optional[int] = None  # static cap on requests per node
    refresh_interval_s: float = 0.1
    stale_after_s: float = 2.0  # a node missing from the fetched views this long takes no new requests
    registry_timeout_s: float = 2.0  # one poll of the registry gives up after this long
    # Shed a request that has already waited this fraction of its TTFT SLO in front of admission
    # (None: never): it can hardly meet its TTFT any more, and serving it delays those that can.
    shed_after_fraction: Optional[float] = 0.5
    default_ttft_slo_s: float = 2.0  # the TTFT SLO of a request that names none
    class_ttft_slo_s: dict[str, float] = field(default_factory=dict)  # the TTFT SLO of each SLO class
    # Refuse before reading a body when no node can take a prompt this small by recent traffic
    # (this quantile of the last 256 prompts; None: only when not even one token fits).
    early_refusal_quantile: Optional[float] = 0.05
    # The engines' KV block size when they cache prefixes (None: they do not). The balancer then keeps an
    # estimate of each node's cache (balancer.core.prefix) and charges a request its uncached tokens there.
    prefix_block_tokens: Optional[int] = None
    # After a request of the tightest SLO class is refused, refuse every request of a looser class for
    # this long, seconds (None or 0: never; PlacementPolicy.choose).
    tier_shed_s: Optional[float] = None
    tightest_class: Optional[str] = None  # the SLO class never shed (None without classes)
    default_class: Optional[str] = None  # the class of a request that names none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BalancerSettings":
        return cls(**data)

    def make_policy(self, node_ids: list[int]) -> PlacementPolicy:
        knobs = dict(self.knobs)
        if self.prefix_block_tokens:
            knobs["prefix_index"] = PrefixIndex(self.prefix_block_tokens)
        return make_placement(self.balancer, node_ids, admission_cap=self.admission_cap,
                              max_in_flight=self.max_in_flight, tier_shed_s=self.tier_shed_s, **knobs)


class LocalBalancer:
    """A placement policy over node keys (Serve replica ids) with a background-refreshed view."""

    def __init__(self, settings: BalancerSettings, fetch_views: Optional[Callable[[dict], RouterPoll]] = None,
                 *, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        settings.make_policy([0])  # validate the settings now
        self.settings = settings
        self._fetch_views = fetch_views
        self._clock = clock
        self._wall_clock = wall_clock  # the engines' clock (their reports' reported_at_s): a view's age
        self._lock = threading.Lock()
        self._policy: Optional[PlacementPolicy] = None
        self._ids: dict[str, int] = {}  # node key -> policy node id, in order of first sight
        self._keys: dict[int, str] = {}
        self._seen_at: dict[str, float] = {}  # node key -> when its last report reached us
        self.placed = 0
        self.rejected = 0
        self.prompt_tokens_placed = 0  # prompt tokens of the requests placed, and what they were charged
        self.prompt_tokens_charged = 0
        self.refresh_failures = 0
        self.routers = 1  # balancers sharing the nodes' budgets, as the registry last counted them
        self._fetched_at = -float("inf")  # when the registry last answered
        self._prompts: deque[int] = deque(maxlen=256)  # prompt lengths of the last requests asked for
        self._small: Optional[int] = None  # small_prompt_tokens() of _prompts, None once they change
        self._view_ages: deque[float] = deque(maxlen=1024)  # PlacementPolicy.view_age_s at the last decisions
        self.key = f"{os.getpid()}:{id(self):x}"
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # -- the view ---------------------------------------------------------------------

    def apply_views(self, views: dict[str, NodeView], routers: Optional[int] = None,
                    tightest_refused_age_s: Optional[float] = None, *, now: Optional[float] = None) -> None:
        """Fresh views by node key (their ``node_id`` is replaced by this balancer's number of the node).

        ``routers``: how many balancers share the nodes' budgets (``PlacementPolicy.set_routers``);
        None keeps the last count (Serve's routing stats do not say). ``tightest_refused_age_s``:
        seconds since any balancer last refused a request of the tightest class (``RouterPoll``);
        when that is later than this balancer's own last such refusal, the looser classes are shed
        from then here too (``PlacementPolicy.tightest_refused``). ``now``: when the views were
        received (this balancer's clock; default: now).
        """
        now = self._clock() if now is None else now
        with self._lock:
            if routers is not None:
                self.routers = routers
            for key, view in views.items():
                node_id = self._ids.get(key)
                if node_id is None:
                    node_id = self._ids[key] = len(self._ids)
                    self._keys[node_id] = key
                self._seen_at[key] = now
                self._ensure_member(node_id)
                self._policy.set_routers(self.routers)
                self._policy.update(replace(view, node_id=node_id))
                index = self._policy.prefix_index
                if index is not None and view.kv_capacity_tokens > 0:
                    index.set_capacity(node_id, view.kv_capacity_tokens // index.block_tokens)
            self._refresh_members(now)
            policy = self._policy
            if tightest_refused_age_s is not None and policy is not None:
                refused_s = now - tightest_refused_age_s
                if policy.tightest_refused_s is None or refused_s > policy.tightest_refused_s:
                    policy.tightest_refused(refused_s)

    def _ensure_member(self, node_id: int) -> None:
        if self._policy is None:
            self._policy = self.settings.make_policy([node_id])
        elif node_id not in self._policy.node_ids:
            self._policy.set_nodes(self._policy.node_ids + [node_id])

    def _live(self, now: float) -> list[str]:
        """Keys of the nodes seen within ``stale_after_s`` of ``now`` (caller holds the lock)."""
        return [k for k, at in self._seen_at.items() if now - at <= self.settings.stale_after_s]

    def _refresh_members(self, now: float) -> None:
        live = [self._ids[k] for k in self._live(now)]
        if self._policy is not None and live and sorted(live) != sorted(self._policy.node_ids):
            self._policy.set_nodes(sorted(live))

    @property
    def registry_ok(self) -> bool:
        """Whether the registry answered within ``stale_after_s`` (else the router's routing stats feed the view)."""
        return self._clock() - self._fetched_at <= self.settings.stale_after_s

    def live_keys(self) -> list[str]:
        now = self._clock()
        with self._lock:
            return sorted(self._live(now))

    # -- decisions ----------------------------------------------------------------------

    def admit(self, request_id: str, prompt_tokens: int, candidates: Optional[Iterable[str]] = None,
              *, record: bool = True, held_fraction: float = 0.0, tier: Optional[str] = None,
              block_hashes: tuple[int, ...] = ()) -> tuple[Optional[str], Decision]:
        """Place ``request_id`` (``prompt_tokens`` >= 1) or refuse it: ``(node key or None, decision)``.

        ``held_fraction`` and ``tier`` are the request's SLO class's (``PlacementPolicy.choose``);
        ``block_hashes`` its prompt's (``block_hashes``), by which each node is charged only the
        tokens it has not cached (``Decision.charged_tokens``).

        ``candidates`` (node keys) restricts where it may go (the replicas
        Serve can reach now). No live node gives a rejection with reason
        ``no-engine``. A request already placed keeps its placement (its key
        is returned even when it is not among ``candidates``: ``move`` re-places
        it). ``record=False`` for a request asked again: its prompt is not
        counted twice in the recent traffic, nor its refusal in ``rejected``.
        """
        now = self._clock()
        with self._lock:
            if record:
                self._prompts.append(prompt_tokens)
                self._small = None
            if self._policy is not None:
                self._refresh_members(now)
            live = set(self._live(now))
            if candidates is not None:
                live &= set(candidates)
            held = self._policy.placements.get(request_id) if self._policy is not None else None
            if held is not None:
                return self._keys[held.node_id], Decision(held.node_id, "admitted")
            if not live:
                self.rejected += record
                return None, Decision(None, "no-engine", 1.0)
            if record:
                age = self._policy.view_age_s(self._wall_clock())
                if age is not None:
                    self._view_ages.append(age)
            members = sorted(self._ids[k] for k in live)
            if members != sorted(self._policy.node_ids):
                saved = list(self._policy.node_ids)
                self._policy.set_nodes(members)
                try:
                    decision = self._policy.choose(request_id, prompt_tokens, held_fraction, tier,
                                                   block_hashes=block_hashes, now_s=now)
                finally:
                    self._policy.set_nodes(saved)
            else:
                decision = self._policy.choose(request_id, prompt_tokens, held_fraction, tier,
                                               block_hashes=block_hashes, now_s=now)
            if decision.rejected:
                self.rejected += record
                return None, decision
            self.placed += 1
            self.prompt_tokens_placed += prompt_tokens
            self.prompt_tokens_charged += prompt_tokens if decision.charged_tokens is None else decision.charged_tokens
            return self._keys[decision.node_id], decision

    def block_hashes(self, prompt_ids: list[int]) -> tuple[int, ...]:
        """The chained block hashes of a prompt's token ids in the engines' KV blocks (``()`` when the
        engines do not cache prefixes): what ``admit`` matches against each node's cache."""
        size = self.settings.prefix_block_tokens
        return prompt_block_hashes(prompt_ids, size) if size else ()

    def too_late(self, waited_s: float, ttft_slo_s: Optional[float] = None) -> bool:
        """Whether a request that has waited ``waited_s`` before admission is shed (see ``shed_after_fraction``)."""
        frac = self.settings.shed_after_fraction
        ttft = ttft_slo_s if ttft_slo_s is not None else self.settings.default_ttft_slo_s
        if frac is None or waited_s <= frac * ttft:
            return False
        with self._lock:
            self.rejected += 1
        return True

    def small_prompt_tokens(self) -> int:
        """A small prompt by recent traffic: the ``early_refusal_quantile`` of the last prompts asked for (1 if none)."""
        q = self.settings.early_refusal_quantile
        with self._lock:
            # Asked once per request under overload, while the prompts seen change only on parsed ones.
            if self._small is None:
                self._small = int(percentile(self._prompts, 100 * q, method="lower")) if self._prompts and q is not None else 1
            return self._small

    def refusal_before_parsing(self) -> Optional[float]:
        """A Retry-After (s) when no live node can take a small request now, else None.

        Lets the ingress refuse under overload before it reads and parses a
        request body: "small" is ``small_prompt_tokens()``, so a request
        smaller than nearly all recent ones may be refused early while it
        would have fit (it gets its Retry-After like the others); with
        ``early_refusal_quantile`` None, only when not even a one-token
        request fits. Only on a fresh view (registry answering): without one
        the router decides.
        """
        if not self.registry_ok:
            return None
        small = self.small_prompt_tokens()
        now = self._clock()
        with self._lock:
            policy = self._policy
            live = [self._ids[k] for k in self._live(now)]
            if policy is None or not live or self.settings.balancer != "pab":
                return None
            views = [policy.views[n] for n in live]
            # (the tier is not known yet: room in any tier's budget lets the request be read)
            if any(has_room(v, small) or any(has_room(v, small, tier=t) for t in v.tier_pab_tokens or ())
                   for v in views):
                return None
            self.rejected += 1
            return retry_after_of_views(small, views)

    def shed_before_parsing(self, slo_class: str) -> Optional[float]:
        """A Retry-After (s) while requests of ``slo_class`` are shed (a class but the tightest, within
        ``tier_shed_s`` of a refusal of the tightest: ``PlacementPolicy.shed_left_s``), else None.

        Lets the ingress refuse them from the ``x-slo-class`` header, before reading and parsing
        their bodies: under a refusal flood that parsing is what starves the admitted streams.
        """
        if not slo_class or slo_class == self.settings.tightest_class or slo_class not in self.settings.class_ttft_slo_s:
            return None
        with self._lock:
            left = self._policy.shed_left_s(slo_class, self._clock()) if self._policy is not None else 0.0
            if left <= 0:
                return None
            self.rejected += 1
        return min(max(left, RETRY_AFTER_MIN_S), RETRY_AFTER_MAX_S)

    def refused_early(self, slo_class: str) -> None:
        """A request of ``slo_class`` ("" for none: the default class) was refused before its body
        was read because no node had budget even for a small prompt: when that is the tightest
        class, the looser ones are shed from now on, as after a refusal at admission
        (``PlacementPolicy.choose``). (A request refused as too late says nothing of the budget.)"""
        name = slo_class or self.settings.default_class
        if name is None or name != self.settings.tightest_class:
            return
        with self._lock:
            if self._policy is not None:
                self._policy.tightest_refused(self._clock())

    def placement(self, request_id: str) -> Optional[str]:
        with self._lock:
            held = self._policy.placements.get(request_id) if self._policy is not None else None
            return None if held is None else self._keys[held.node_id]

    def move(self, request_id: str, candidates: Iterable[str]) -> Optional[str]:
        """Re-place an admitted request among ``candidates`` (its replica is gone), keeping its admission."""
        with self._lock:
            if self._policy is None or request_id not in self._policy.placements:
                return None
            allowed = {self._ids[k] for k in candidates if k in self._ids}
            exclude = [n for n in self._policy.node_ids if n not in allowed]
            saved = list(self._policy.node_ids)
            if not allowed:
                return None
            self._policy.set_nodes(sorted(set(saved) | allowed))
            try:
                target = self._policy.move(request_id, exclude=exclude)
            finally:
                self._policy.set_nodes(saved)
            return None if target is None else self._keys[target]

    def release(self, request_id: str) -> bool:
        with self._lock:
            return self._policy is not None and self._policy.release(request_id)

    def stats(self) -> dict[str, Any]:
        """Counters for status pages: decisions, requests held, debits in transit per node."""
        with self._lock:
            policy = self._policy
            nodes = {}
            if policy is not None:
                for key, nid in self._ids.items():
                    v = policy.view(nid)
                    nodes[key] = {"pab_tokens_debited": v.pab_tokens, "in_flight": v.in_flight,
                                  "in_transit": policy.in_transit(nid)}
            refused_s = policy.tightest_refused_s if policy is not None else None
            return {"placed": self.placed, "rejected": self.rejected, "refresh_failures": self.refresh_failures,
                    "routers": self.routers,
                    # how long ago this balancer last refused a request of the tightest class (shared by
                    # the registry: every balancer sheds the looser classes after any one's refusal)
                    "tightest_refused_age_s": None if refused_s is None else self._clock() - refused_s,
                    "prompt_tokens_placed": self.prompt_tokens_placed,
                    "prompt_tokens_charged": self.prompt_tokens_charged, "nodes": nodes,
                    # how old the nodes' views were at this balancer's last decisions (wall clock: the
                    # engines stamp their reports with theirs), seconds; None before any decision
                    "view_age_s": view_age_summary(self._view_ages)}

    # -- background refresh -------------------------------------------------------------

    def start(self) -> None:
        """Start polling ``fetch_views`` every ``refresh_interval_s`` in a daemon thread (idempotent)."""
        if self._thread is not None or self._fetch_views is None:
            return
        self._thread = threading.Thread(target=self._refresh_loop, name="pab-view-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def refresh_once(self) -> bool:
        """Poll the registry once (``fetch_views``) and apply its answer; True when it answered.

        The nodes it reports and the registry's freshness (``registry_ok``) are stamped with one clock
        reading, so they go stale together: while ``registry_ok`` holds, the nodes of its last answer
        are live (stamped apart, a request between the two stamps found no live node with the registry
        still counted as answering, and got a 503).
        """
        try:
            answer = self._fetch_views(self.stats())
            now = self._clock()
            self.apply_views(answer.views, answer.routers, answer.tightest_refused_age_s, now=now)
            self._fetched_at = now
            return True
        except Exception as exc:  # noqa: BLE001 - the registry restarts or is gone: keep the last view
            self.refresh_failures += 1
            if self.refresh_failures in (1, 10, 100) or self.refresh_failures % 1000 == 0:
                logger.warning("PAB view refresh failed (%s: %s); deciding on the last view and "
                               "the replicas' routing stats", type(exc).__name__, exc)
            return False

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self.refresh_once()
            self._stop.wait(self.settings.refresh_interval_s)


# ------------------------------------------------------------------------------ per process

_BALANCERS: dict[tuple[str, str], LocalBalancer] = {}
_BALANCERS_LOCK = threading.Lock()


@dataclass
class _Waiter:
    request_id: str
    prompt_tokens: int
    placement: dict[str, Any]  # admit()'s keyword arguments: held_fraction, tier, block_hashes
    future: "asyncio.Future[tuple[Optional[str], Decision]]"
    last: Optional[Decision] = None  # the refusal of its latest attempt (None: not tried yet)


class HeldAdmissions:
    """A bounded wait for budget in front of ``LocalBalancer.admit``: the ingress's admission queue.

    A request no node has budget for is held up to ``wait_s`` seconds after its
    arrival and tried again every ``refresh_interval_s`` (the view's refresh),
    the held requests in ``order`` (``balancer.core.admission_queue``: ``edf``,
    earliest first-token deadline first, so a held interactive request goes
    before a held batch one; the simulator's ``--balancer-queue-order``). While
    requests are held, a new one joins them instead of taking budget ahead of
    them. One per ingress process, used from its event loop; ``clock`` gives the
    arrivals' time base (``time.time`` for the ingress's arrival stamps).
    """

    def __init__(self, lb: LocalBalancer, wait_s: float, order: str = "edf",
                 *, clock: Callable[[], float] = time.time) -> None:
        self.lb = lb
        self.queue: AdmissionQueue[_Waiter] = AdmissionQueue(wait_s, order)
        self._clock = clock
        self._task: Optional[asyncio.Task] = None

    async def admit(self, request_id: str, prompt_tokens: int, arrival_s: float, ttft_slo_s: float,
                    **placement: Any) -> tuple[Optional[str], Decision]:
        """Place the request, waiting for budget up to ``wait_s`` after ``arrival_s``: ``(node key, decision)``,
        or ``(None, the last refusal)`` when the wait is over. A ``no-engine`` refusal returns at once.

        ``placement``: ``LocalBalancer.admit``'s keyword arguments (``held_fraction``, ``tier``,
        ``block_hashes``). A caller cancelled while waiting leaves the queue at the next round.
        """
        if not self.queue:
            node, decision = self.lb.admit(request_id, prompt_tokens, **placement)
            if (node is not None or decision.reason == "no-engine" or self.queue.wait_s <= 0
                    or self._clock() > arrival_s + self.queue.wait_s):
                return node, decision
            waiter = _Waiter(request_id, prompt_tokens, placement, asyncio.get_running_loop().create_future(),
                             decision)
            self.queue.hold(waiter, arrival_s, ttft_slo_s)
        else:  # behind the requests already held: tried with them, in the queue's order
            waiter = _Waiter(request_id, prompt_tokens, placement, asyncio.get_running_loop().create_future())
            self.queue.hold(waiter, arrival_s, ttft_slo_s)
            self._round()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._retry_held())
        return await waiter.future

    async def _retry_held(self) -> None:
        while self.queue:
            await asyncio.sleep(self.lb.settings.refresh_interval_s)
            self._round()

    def _round(self) -> None:
        for waiter in self.queue.retry(self._clock(), self._attempt):
            if not waiter.future.done():
                waiter.future.set_result((None, waiter.last or Decision(None, "no-budget", 1.0)))

    def _attempt(self, waiter: _Waiter) -> bool:
        """Try one held request; True when it leaves the queue (placed, no engine, or its caller gone)."""
        if waiter.future.done():
            return True
        try:
            node, decision = self.lb.admit(waiter.request_id, waiter.prompt_tokens, record=waiter.last is None,
                                           **waiter.placement)
        except Exception as exc:  # noqa: BLE001 - its caller raises it; the other held requests go on
            waiter.future.set_exception(exc)
            return True
        if node is not None or decision.reason == "no-engine":
            waiter.future.set_result((node, decision))
            return True
        waiter.last = decision
        return False


def registry_fetcher(app_name: str, engine_deployment: str, timeout_s: float = 2.0) -> Callable[[dict], RouterPoll]:
    """A function that polls the deployment's PAB registry (``PABRegistry.poll``), finding it again after a restart."""
    import ray

    state: dict[str, Any] = {"handle": None}
    key = f"{os.getpid()}:{app_name}:{engine_deployment}"

    def fetch(router_stats: dict) -> RouterPoll:
        if state["handle"] is None:
            state["handle"] = find_registry(app_name, engine_deployment)
            if state["handle"] is None:
                raise LookupError("no PAB registry yet")
        try:
            return ray.get(state["handle"].poll.remote(key, router_stats), timeout=timeout_s)
        except Exception:
            state["handle"] = None
            raise

    return fetch


def local_balancers() -> list[LocalBalancer]:
    """Every balancer this process holds (an ingress process holds one per engine deployment)."""
    with _BALANCERS_LOCK:
        return list(_BALANCERS.values())


def local_balancer(app_name: str, engine_deployment: str, settings: BalancerSettings) -> LocalBalancer:
    """This process's balancer for ``engine_deployment`` of ``app_name``, created and started on first use."""
    key = (app_name, engine_deployment)
    with _BALANCERS_LOCK:
        lb = _BALANCERS.get(key)
        if lb is None:
            fetch = registry_fetcher(app_name, engine_deployment, settings.registry_timeout_s)
            lb = _BALANCERS[key] = LocalBalancer(settings, fetch)
            lb.start()
        return lb


_rejections = None


def count_rejection(slo_class: str = "") -> None:
    """Count one admission rejection of a request of ``slo_class`` ("" before its class is known, or
    without classes), exported as ``ray_fairbatching_admission_rejections_total``."""
    global _rejections
    try:
        if _rejections is None:
            from node.serve.metrics import instrument

            _rejections = instrument("fairbatching_admission_rejections_total")
        _rejections.inc(tags={"slo_class": slo_class})
    except Exception:  # metrics must never fail a request
        logger.exception("could not record an admission rejection")
