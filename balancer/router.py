"""The Serve request router of the engine deployment: PAB placement with admission control.

``PABRequestRouter.choose_replicas`` (Ray Serve's one routing hook) places each
``generate`` call on the engine the balancer picks and rejects it at admission
when no engine has budget for its prompt:

* the decision comes from the PAB registry (``balancer.pab_registry``), which
  runs the balancer's placement policy and debits the chosen node atomically;
  the reservation is released in ``on_request_completed``;
* on rejection the router optionally waits (``admission_wait_s``, re-asking with
  Serve's backoff), then fails the request with a ``BackPressureError`` carrying
  status 429 and ``retry_after_s``; the ingress turns that into HTTP 429 with a
  ``Retry-After`` header. (Raising inside ``choose_replicas`` would hang the
  request, and returning nothing without backoff makes Serve spin; so the
  pending request's future is failed and one replica is returned, which Serve
  skips because the request is already done.)
* when the registry does not answer within ``registry_timeout_s`` the router
  falls back to the replicas' routing stats (``record_routing_stats``, at least
  ~0.2 s stale) and runs the same placement policy locally.

Calls other than ``generate`` (health, stats) go to any replica.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any, List, Optional

import ray
from ray.serve.exceptions import BackPressureError
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from balancer.placement import NodeView, PlacementPolicy
from balancer.registry import make_placement

logger = logging.getLogger("ray.serve")

#: Engine method whose calls are placed by budget.
PLACED_METHOD = "generate"
_SERVE_NAMESPACE = "serve"


_rejections = None


def _count_rejection() -> None:
    """Count one admission rejection (exported as ``ray_fairbatching_admission_rejections_total``)."""
    global _rejections
    if _rejections is None:
        from ray.util.metrics import Counter

        _rejections = Counter("fairbatching_admission_rejections_total",
                              description="Requests rejected at admission (HTTP 429)")
    _rejections.inc()


def prompt_tokens_of(pending_request: PendingRequest) -> int:
    """Uncached prompt tokens of a ``generate`` call: ``args[0]["prompt_tokens"]`` (ingress sets it)."""
    if pending_request.args and isinstance(pending_request.args[0], dict):
        n = pending_request.args[0].get("prompt_tokens")
        if isinstance(n, int) and n > 0:
            return n
    return 1


def view_from_stats(node_id: int, stats: dict[str, Any]) -> NodeView:
    """A ``NodeView`` from an engine replica's routing stats (missing fields stay at their defaults)."""
    keys = ("pab_tokens", "in_flight", "queued_prefill_tokens", "kv_usage", "waiting",
            "reported_at_s", "prefill_rate_tps", "kv_capacity_tokens")
    return NodeView(node_id=node_id, **{k: stats[k] for k in keys if k in stats})


class PABRequestRouter(RequestRouter):
    """Places each request on the node the balancer picks; 429 when no node has budget.

    No ``FIFOMixin``: it would hand the replica chosen for one request to the
    oldest pending one, whose prompt was not the one reserved for. The base
    class matches the chosen replica to exactly the request it was chosen for.
    """

    def initialize_state(
        self,
        balancer: str = "pab",
        knobs: Optional[dict] = None,
        admission_cap: Optional[int] = None,
        admission_wait_s: float = 0.0,
        registry_timeout_s: float = 0.5,
        registry_retry_s: float = 2.0,
        **_: Any,
    ) -> None:
        self.balancer = balancer
        self.knobs = dict(knobs or {})
        self.admission_cap = admission_cap
        self.admission_wait_s = float(admission_wait_s)
        self.registry_timeout_s = float(registry_timeout_s)
        self.registry_retry_s = float(registry_retry_s)
        self._registry = None  # ActorHandle, resolved lazily
        self._registry_down_until = 0.0  # after a failure, skip the registry until then
        self._reservations: dict[str, tuple[str, str, bool]] = {}  # request id -> (token, node key, remote)
        self._tokens = itertools.count()
        self._fallback: Optional[PlacementPolicy] = None
        self._fallback_keys: tuple[str, ...] = ()
        self.fallback_decisions = 0

    # -- the registry ------------------------------------------------------------

    def _registry_handle(self, candidates: List[RunningReplica]):
        if self._registry is not None:
            return self._registry
        for r in candidates:
            name = (r.routing_stats or {}).get("registry_actor")
            if name:
                try:
                    self._registry = ray.get_actor(name, namespace=_SERVE_NAMESPACE)
                    return self._registry
                except ValueError:
                    continue
        return None

    def _registry_failed(self, exc: BaseException) -> None:
        logger.warning("PAB registry unreachable (%s); routing from replica stats", type(exc).__name__)
        self._registry = None
        self._registry_down_until = time.monotonic() + self.registry_retry_s

    async def _reserve_remote(self, token: str, n: int, keys: list[str], candidates) -> Optional[dict]:
        if time.monotonic() < self._registry_down_until:
            return None
        handle = self._registry_handle(candidates)
        if handle is None:
            return None
        try:
            return await asyncio.wait_for(handle.reserve.remote(token, n, keys), self.registry_timeout_s)
        except (asyncio.TimeoutError, ray.exceptions.RayError) as exc:
            self._registry_failed(exc)
            return None

    def _release_remote(self, token: str) -> None:
        if self._registry is not None:
            try:
                self._registry.release.remote(token)
            except Exception as exc:  # noqa: BLE001 - a dead registry forgets reservations anyway
                self._registry_failed(exc)

    # -- the fallback: placement over routing stats --------------------------------

    def _reserve_local(self, token: str, n: int, by_key: dict[str, RunningReplica]) -> dict:
        keys = tuple(sorted(by_key))
        if self._fallback is None or keys != self._fallback_keys:
            self._fallback = make_placement(
                self.balancer, list(range(len(keys))), admission_cap=self.admission_cap, **self.knobs
            )
            self._fallback_keys = keys
        for i, k in enumerate(keys):
            stats = by_key[k].routing_stats or {}
            if stats:
                self._fallback.update(view_from_stats(i, stats))
        self.fallback_decisions += 1
        d = self._fallback.choose(token, n)
        if d.rejected:
            return {"node": None, "reason": d.reason, "retry_after_s": d.retry_after_s}
        return {"node": keys[d.node_id], "reason": d.reason + "(fallback)", "retry_after_s": None}

    # -- Serve hooks ------------------------------------------------------------------

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        if (
            pending_request is None
            or pending_request.future.done()
            or pending_request.metadata.call_method != PLACED_METHOD
        ):
            return [candidate_replicas]
        rid = pending_request.metadata.internal_request_id
        self._release(rid)  # an earlier attempt of this request (replica refused or died)
        by_key = {r.replica_id.unique_id: r for r in candidate_replicas}
        n = prompt_tokens_of(pending_request)
        token = f"{rid}:{next(self._tokens)}"
        decision = await self._reserve_remote(token, n, list(by_key), candidate_replicas)
        remote = decision is not None
        if decision is None:
            decision = self._reserve_local(token, n, by_key)
        node = decision["node"]
        if node is not None and node in by_key:
            self._reservations[rid] = (token, node, remote)
            return [[by_key[node]]]
        if node is not None:  # the registry knows a node this router has not seen yet
            if remote:
                self._release_remote(token)
            return [candidate_replicas]
        if time.time() - pending_request.created_at < self.admission_wait_s:
            pending_request.routing_context.should_backoff = True
            return []
        retry = decision.get("retry_after_s") or 1.0
        try:
            _count_rejection()
        except Exception:  # metrics must never fail a request
            logger.exception("could not record an admission rejection")
        pending_request.future.set_exception(
            BackPressureError(num_queued_requests=0, max_queued_requests=0, status_code=429, retry_after_s=retry)
        )
        return [candidate_replicas[:1]]  # Serve sees the request done and sends nothing

    def _release(self, rid: str) -> None:
        held = self._reservations.pop(rid, None)
        if held is None:
            return
        token, node, remote = held
        if remote:
            self._release_remote(token)
        elif self._fallback is not None and node in self._fallback_keys:
            i = self._fallback_keys.index(node)
            if self._fallback.in_flight.get(i, 0) > 0:
                self._fallback.on_complete(i)

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        held = self._reservations.get(internal_request_id)
        if held is not None and held[1] == replica_id.unique_id:
            self._release(internal_request_id)
