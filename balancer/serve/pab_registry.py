"""The PAB registry: every engine replica's latest report, and the deployment's step-time model.

One registry serves the whole engine deployment (a Serve deployment-scoped
actor). Engine replicas push their ``NodeView`` every ``report_interval_s``
(``report``); every router polls ``views()`` in the background at the same
interval and decides, debits and rejects in its own process
(``balancer.serve.admission.LocalBalancer``). Nothing on a request's path calls the
registry. A registry that restarts is rebuilt by the next round of reports
(one report interval), and routers fall back to Serve's routing stats of the
replicas while it is away.

The class is plain Python: Ray runs it as an actor, tests use it directly.
Node keys are Serve replica ids (strings).

The registry also keeps the deployment's step-time model. A Serve deployment's
replicas are identical (same model, same accelerator), so one step-time model
describes them all (DESIGN section 2: one fit per deployment). Each node refits
its own from the steps it ran, and a node's refit reflects how much traffic it
got: a node that gets none keeps whatever its early steps said, and if those
made it look slow its budget stays low, it gets no traffic, and it never learns
otherwise (PAB placement herds onto the other nodes). So every report answers
with ``deployment_model()``: the coefficient-wise median of the models the
nodes refitted within ``model_max_age_s``, which the nodes compute their
budgets with. Budgets then differ by load, not by each node's luck.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from balancer.core.placement import NodeView
from node.core.step_time import StepTimeModel

#: Name of the deployment-scoped actor on the engine deployment.
REGISTRY_ACTOR_NAME = "pab_registry"

_MODEL_KEYS = ("a_s", "b_s_per_token", "c_s_per_context_token", "safety_factor", "host_s", "attn_prefill_s_per_token_sq")
VIEW_FIELDS = tuple(f.name for f in fields(NodeView) if f.name != "node_id")


@dataclass(frozen=True)
class NodeReport:
    """What an engine replica pushes to the registry every ``report_interval_s``.

    ``view`` is its budget and load (its ``node_id`` is not used: each balancer numbers
    the nodes it sees); ``step_model`` the node's own step-time model and ``refits`` how
    many online refits made it (0: still its profile's, shown but not pooled);
    ``status`` what ``fairbatching status`` shows besides (display only, JSON-able).
    """

    view: NodeView
    step_model: Optional[StepTimeModel] = None
    refits: int = 0
    status: dict[str, Any] = field(default_factory=dict)


def view_from_dict(node_id: int, data: dict[str, Any]) -> NodeView:
    """A ``NodeView`` from the plain dict of Serve's routing stats (``EngineReplica.record_routing_stats``,
    Serve's own channel, which carries JSON): unknown keys ignored, ids as a frozenset."""
    values = {k: data[k] for k in VIEW_FIELDS if k in data}
    if values.get("received_ids") is not None:
        values["received_ids"] = frozenset(values["received_ids"])
    return NodeView(node_id=node_id, **values)


@dataclass(frozen=True)
class RouterPoll:
    """The registry's answer to a balancer's poll: the latest view of every live node by node key;
    how many balancers polled within ``stale_after_s`` (itself included), among which each node's
    budget is shared (``PlacementPolicy.set_routers``); and seconds since any of them last refused a
    request of the tightest SLO class (None: none did), after which every balancer sheds the looser
    classes (``PlacementPolicy.tier_shed_s``)."""

    views: dict[str, NodeView]
    routers: int
    tightest_refused_age_s: Optional[float] = None


class PABRegistry:
    """Latest report per engine replica, the deployment model, and what the routers decided."""

    def __init__(self, *, stale_after_s: float = 3.0, model_max_age_s: float = 60.0, **_: Any) -> None:
        self.stale_after_s = stale_after_s
        self.model_max_age_s = model_max_age_s
        self._reports: dict[str, NodeReport] = {}  # latest report per node key
        self._received_at: dict[str, float] = {}  # registry clock at each node's last report
        self._refits: dict[str, tuple[int, float, StepTimeModel]] = {}  # node key -> (refit count, seen at, model)
        self._routers: dict[str, dict[str, Any]] = {}  # router key -> its latest counters (for status)

    # -- reports ----------------------------------------------------------------

    def report(self, node_key: str, report: NodeReport) -> Optional[StepTimeModel]:
        """A node's fresh report; returns the deployment's step-time model (``deployment_model``), or None."""
        self._reports[node_key] = report
        self._received_at[node_key] = time.monotonic()
        if report.step_model is not None and report.refits >= 1:
            held = self._refits.get(node_key)
            if held is None or held[0] != report.refits:  # a model it actually refitted since
                self._refits[node_key] = (report.refits, time.monotonic(), report.step_model)
        return self.deployment_model()

    def _fresh_refits(self) -> list[StepTimeModel]:
        now = time.monotonic()
        live = set(self._live())
        return [m for k, (_, at, m) in self._refits.items() if k in live and now - at <= self.model_max_age_s]

    def deployment_model(self) -> Optional[StepTimeModel]:
        """Coefficient-wise median of the live nodes' refits of the last ``model_max_age_s``; None if none."""
        fresh = self._fresh_refits()
        if not fresh:
            return None
        return StepTimeModel(**{k: statistics.median(getattr(m, k) for m in fresh) for k in _MODEL_KEYS})

    def forget(self, node_key: str) -> None:
        """Drop a node (it stopped)."""
        for table in (self._reports, self._received_at, self._refits):
            table.pop(node_key, None)

    def _live(self) -> tuple[str, ...]:
        now = time.monotonic()
        return tuple(sorted(k for k, at in self._received_at.items() if now - at <= self.stale_after_s))

    # -- what the routers poll ------------------------------------------------------

    def views(self) -> dict[str, NodeView]:
        """The latest view of every live node, by node key."""
        return {k: self._reports[k].view for k in self._live()}

    def poll(self, router_key: str, router_stats: dict[str, Any]) -> RouterPoll:
        """A balancer's poll: its counters (``router_stats``, kept for ``snapshot``, with its
        ``tightest_refused_age_s``) in; the live nodes' views, the number of live balancers and the
        age of the latest refusal of the tightest class among them out."""
        now = time.monotonic()
        self._routers[router_key] = {**router_stats, "seen_at": now}
        live = self._live_routers(now)
        ages = [v["tightest_refused_age_s"] + now - v["seen_at"] for v in live.values()
                if v.get("tightest_refused_age_s") is not None]
        return RouterPoll(self.views(), len(live), min(ages, default=None))

    def _live_routers(self, now: float) -> dict[str, dict[str, Any]]:
        """The counters of the balancers that polled within ``stale_after_s`` of ``now``, by router key."""
        return {k: v for k, v in self._routers.items() if now - v["seen_at"] <= self.stale_after_s}

    # -- inspection -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every known node's last report, report age and extras; the routers' counters; the model."""
        now = time.monotonic()
        nodes = {}
        for key, rep in self._reports.items():
            row = {k: getattr(rep.view, k) for k in VIEW_FIELDS if k != "received_ids"}
            row["report_age_s"] = now - self._received_at[key]
            row["live"] = row["report_age_s"] <= self.stale_after_s
            row["own_model"] = {**asdict(rep.step_model), "refits": rep.refits} if rep.step_model else None
            row.update(rep.status)
            nodes[key] = row
        routers = {k: {**v, "age_s": now - v["seen_at"]} for k, v in self._live_routers(now).items()}
        decisions = {"placed": sum(r.get("placed", 0) for r in routers.values()),
                     "rejected": sum(r.get("rejected", 0) for r in routers.values())}
        model = self.deployment_model()
        pooled = {**asdict(model), "nodes": len(self._fresh_refits())} if model is not None else None
        return {"nodes": nodes, "routers": routers, "decisions": decisions, "deployment_model": pooled}

    def ping(self) -> str:
        return "ok"

    def actor_name(self) -> str | None:
        """The Ray actor name this registry runs under (routers look it up by name)."""
        import ray

        return ray.get_runtime_context().get_actor_name()


def find_registry(app_name: str, engine_deployment: str):
    """A handle to the registry of ``engine_deployment`` in Serve app ``app_name``, or None.

    Serve names a deployment-scoped actor
    ``SERVE_DEPLOYMENT_ACTOR::<app>::<deployment>::<code version>::<name>`` in the
    ``serve`` namespace; callers outside the engine's replicas (the ingress, the
    CLI) do not know the code version, so the name is looked up by prefix.
    """
    import ray

    prefix = f"SERVE_DEPLOYMENT_ACTOR::{app_name}::{engine_deployment}::"
    suffix = f"::{REGISTRY_ACTOR_NAME}"
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name, ns = entry["name"], entry["namespace"]
        if ns == "serve" and name.startswith(prefix) and name.endswith(suffix):
            try:
                return ray.get_actor(name, namespace=ns)
            except ValueError:
                continue
    return None
