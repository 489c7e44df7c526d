"""The Serve request router of the engine deployment: each admitted call goes where it was placed.

``PABRequestRouter.choose_replicas`` (Ray Serve's one routing hook): a
``generate`` call whose request was admitted by the ingress
(``balancer.serve.admission.LocalBalancer``, in this same process) goes to the
replica it was placed on; a call whose replica is gone moves to another one,
keeping its admission; a call that was not admitted (a caller using the handle
directly) is admitted here, and refused with a ``BackPressureError`` carrying
status 429 and ``retry_after_s`` when no replica has budget. (Raising inside
``choose_replicas`` would hang the request, and returning nothing without
backoff makes Serve spin; so the pending request's future is failed and one
replica is returned, which Serve skips because the request is already done.)
Other calls go to any replica. When the PAB registry does not answer, the
replicas' routing stats (polled by Serve in the background) feed the view.

Serve pickles this module by value into every process that routes, so it
holds no state of its own: the balancer it shares with the ingress lives in
``balancer.serve.admission``.
"""

from __future__ import annotations

import time
from typing import Any, List, Optional

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from balancer.core.placement import PlacementRequest
from balancer.serve.pab_registry import view_from_dict
from balancer.serve.admission import BalancerSettings, LocalBalancer, count_rejection, local_balancer

#: Engine method whose calls are placed by budget.
PLACED_METHOD = "generate"


def request_of(pending_request) -> Optional[PlacementRequest]:
    """The ``generate`` call's ``PlacementRequest`` (``args[0]``, the ingress's ``EngineJob``), or None."""
    if pending_request.args and isinstance(pending_request.args[0], PlacementRequest):
        return pending_request.args[0]
    return None


class PABRequestRouter(RequestRouter):
    """Sends each admitted ``generate`` call to the replica its request was placed on.

    No ``FIFOMixin``: it would hand the replica chosen for one request to the
    oldest pending one, whose prompt was not the one placed. The base class
    matches the chosen replica to exactly the request it was chosen for.
    """

    def initialize_state(self, settings: Optional[dict] = None, admission_wait_s: float = 0.0, **_: Any) -> None:
        self.settings = BalancerSettings.from_dict(settings or {})
        self.admission_wait_s = float(admission_wait_s)
        self._balancer: Optional[LocalBalancer] = None
        self._by_internal: dict[str, str] = {}  # Serve's internal request id -> our request id

    @property
    def balancer(self) -> LocalBalancer:
        if self._balancer is None:
            dep = self._deployment_id
            self._balancer = local_balancer(dep.app_name, dep.name, self.settings)
        return self._balancer

    def _feed_routing_stats(self, replicas: List[RunningReplica]) -> None:
        """Serve's polled routing stats: the view when the registry is away (older reports are ignored)."""
        views = {r.replica_id.unique_id: view_from_dict(0, r.routing_stats) for r in replicas if r.routing_stats}
        if views:
            self.balancer.apply_views(views)

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
        req = request_of(pending_request)
        # The ingress's request id, else Serve's id of this call: the same on every call for one request.
        rid = req.request_id if req is not None else str(pending_request.metadata.internal_request_id)
        by_key = {r.replica_id.unique_id: r for r in candidate_replicas}
        lb = self.balancer
        if not lb.registry_ok:
            self._feed_routing_stats(candidate_replicas)
        node = lb.placement(rid)
        if node is not None and node not in by_key:  # its replica is gone: keep the admission, move it
            node = lb.move(rid, by_key)
        if node is None and lb.placement(rid) is not None:
            # Admitted, its replica gone, and no reachable replica has reported yet: Serve picks one;
            # the request keeps its admission (its debit stays on the old node until released).
            return [candidate_replicas]
        if node is None:
            n = req.prompt_tokens if req is not None else 1
            node, decision = lb.admit(rid, max(n, 1), candidates=by_key,
                                      held_fraction=req.held_fraction if req is not None else 0.0,
                                      tier=req.tier if req is not None else None,
                                      block_hashes=req.block_hashes if req is not None else ())
            if node is None:
                if time.time() - pending_request.created_at < self.admission_wait_s:
                    pending_request.routing_context.should_backoff = True
                    return []
                from ray.serve.exceptions import BackPressureError

                count_rejection(req.slo_class if req is not None else "")
                pending_request.future.set_exception(BackPressureError(
                    num_queued_requests=0, max_queued_requests=0, status_code=429,
                    retry_after_s=decision.retry_after_s or 1.0))
                return [candidate_replicas[:1]]  # Serve sees the request done and sends nothing
            # Admitted here, not by the ingress: this router releases it when Serve says it is done.
            # (The ingress releases its own admissions: a failed attempt's completion must not
            # release the admission its retry keeps.)
            self._by_internal[pending_request.metadata.internal_request_id] = rid
        return [[by_key[node]]]

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        rid = self._by_internal.pop(internal_request_id, None)
        if rid is not None:
            self.balancer.release(rid)
