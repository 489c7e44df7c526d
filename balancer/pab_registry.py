"""The PAB registry: every engine replica's latest report, and atomic reservations against them.

One registry serves the whole engine deployment (a Serve deployment-scoped
actor, so every router in every ingress process sees the same budgets).
Engine replicas push a ``NodeView`` every step or every few tens of ms
(``report``); the Serve router asks for a node per request (``reserve``), which
runs the balancer's placement policy (``balancer.registry.make_placement``, the
same code the simulator runs) and debits the chosen node at once; the router
gives the reservation back when the request completes (``release``).

The class is plain Python: Ray runs it as an actor (one call at a time, so
``reserve`` is atomic), and tests use it directly. Node keys are Serve replica
ids (strings); the placement policy sees small integers, assigned in order of
first report.

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

import math
import random
import statistics
import time
from collections import deque
from dataclasses import fields
from typing import Any, Iterable

from balancer.placement import NodeView, PlacementPolicy
from balancer.registry import make_placement

#: Name of the deployment-scoped actor on the engine deployment.
REGISTRY_ACTOR_NAME = "pab_registry"

_MODEL_KEYS = ("a_s", "b_s_per_token", "c_s_per_context_token", "safety_factor")
_VIEW_FIELDS = tuple(f.name for f in fields(NodeView) if f.name != "node_id")


class PABRegistry:
    """Latest report per engine replica plus the placement policy that reserves against them."""

    def __init__(
        self,
        balancer: str = "pab",
        *,
        knobs: dict[str, Any] | None = None,
        admission_cap: int | None = None,
        stale_after_s: float = 10.0,
        model_max_age_s: float = 60.0,
        seed: int = 0,
    ) -> None:
        self.balancer = balancer
        self.knobs = dict(knobs or {})
        self.admission_cap = admission_cap
        self.stale_after_s = stale_after_s
        self.model_max_age_s = model_max_age_s
        self._rng = random.Random(seed)
        make_placement(balancer, [0], admission_cap=admission_cap, **self.knobs)  # validate now
        self._ids: dict[str, int] = {}  # node key -> placement node id
        self._views: dict[str, NodeView] = {}  # latest report per node key
        self._extra: dict[str, dict] = {}  # what a node reported besides its view (for status)
        self._received_at: dict[str, float] = {}  # registry clock at each node's last report
        self._refits: dict[str, tuple[int, float, dict]] = {}  # node key -> (refit count, seen at, model)
        self._reservations: dict[str, str] = {}  # reservation token -> node key
        self._policy: PlacementPolicy | None = None
        self._members: tuple[str, ...] = ()
        self.decisions = {"placed": 0, "rejected": 0}
        # The latest decisions with the (debited) budgets they saw: what placed where, and why.
        self.recent: deque[dict[str, Any]] = deque(maxlen=64)

    # -- reports ----------------------------------------------------------------

    def report(self, node_key: str, view: dict[str, Any], extra: dict[str, Any] | None = None) -> dict | None:
        """A node's fresh report: ``view`` holds ``NodeView`` fields (``node_id`` excluded).

        ``extra`` is shown by ``snapshot``; its ``own_model`` (the node's refitted
        step-time model with its ``refits`` count) feeds ``deployment_model``,
        which is returned.
        """
        node_id = self._ids.setdefault(node_key, len(self._ids))
        nv = NodeView(node_id=node_id, **{k: view[k] for k in _VIEW_FIELDS if k in view})
        self._views[node_key] = nv
        self._received_at[node_key] = time.monotonic()
        if extra is not None:
            self._extra[node_key] = extra
            self._note_refit(node_key, extra.get("own_model"))
        if self._policy is not None and node_key in self._members:
            self._policy.update(nv)
        return self.deployment_model()

    def _note_refit(self, node_key: str, model: Any) -> None:
        """Remember a node's own model when its refit count moved (a model it actually refitted)."""
        if not isinstance(model, dict) or not isinstance(model.get("refits"), int) or model["refits"] < 1:
            return
        try:
            coeffs = {k: float(model[k]) for k in _MODEL_KEYS}
        except (KeyError, TypeError, ValueError):
            return
        if not all(math.isfinite(v) and v >= 0 for v in coeffs.values()) or coeffs["b_s_per_token"] <= 0:
            return
        held = self._refits.get(node_key)
        if held is None or held[0] != model["refits"]:
            self._refits[node_key] = (model["refits"], time.monotonic(), coeffs)

    def deployment_model(self) -> dict[str, float] | None:
        """Coefficient-wise median of the live nodes' refits of the last ``model_max_age_s``; None if none."""
        now = time.monotonic()
        live = set(self._live(None))
        fresh = [m for k, (_, at, m) in self._refits.items() if k in live and now - at <= self.model_max_age_s]
        if not fresh:
            return None
        return {k: statistics.median(m[k] for m in fresh) for k in _MODEL_KEYS} | {"nodes": len(fresh)}

    def forget(self, node_key: str) -> None:
        """Drop a node (it stopped); its reservations are released with it."""
        self._views.pop(node_key, None)
        self._extra.pop(node_key, None)
        self._received_at.pop(node_key, None)
        self._refits.pop(node_key, None)
        for token in [t for t, k in self._reservations.items() if k == node_key]:
            del self._reservations[token]
        self._policy = None

    def _live(self, candidates: Iterable[str] | None) -> tuple[str, ...]:
        now = time.monotonic()
        keys = self._views if candidates is None else [k for k in candidates if k in self._views]
        return tuple(sorted(k for k in keys if now - self._received_at[k] <= self.stale_after_s))

    def _policy_for(self, members: tuple[str, ...]) -> PlacementPolicy:
        """The placement policy over ``members``, rebuilt (with current views) when membership changes."""
        if self._policy is None or members != self._members:
            policy = make_placement(
                self.balancer,
                [self._ids[k] for k in members],
                admission_cap=self.admission_cap,
                rng=self._rng,
                **self.knobs,
            )
            for k in members:
                policy.update(self._views[k])
            for k in self._reservations.values():
                if k in members:
                    policy.in_flight[self._ids[k]] += 1
            self._policy, self._members = policy, members
        return self._policy

    # -- reservations -------------------------------------------------------------

    def reserve(self, token: str, prompt_tokens: int, candidates: list[str] | None = None) -> dict[str, Any]:
        """Place one request of ``prompt_tokens`` on a live node among ``candidates`` (all if None).

        Returns ``{"node": key or None, "reason": str, "retry_after_s": float or None}``.
        A placed request stays reserved (debited, counted in flight) until ``release(token)``.
        """
        if token in self._reservations:
            self.release(token)
        members = self._live(candidates)
        if not members:
            self.decisions["rejected"] += 1
            return {"node": None, "reason": "no-engine", "retry_after_s": 1.0}
        policy = self._policy_for(members)
        seen = {k: policy.view(self._ids[k]).pab_tokens for k in members}
        decision = policy.choose(token, max(1, int(prompt_tokens)))
        if decision.rejected:
            self.decisions["rejected"] += 1
            self.recent.append({"token": token, "prompt_tokens": prompt_tokens, "node": None, "pab_seen": seen})
            return {"node": None, "reason": decision.reason, "retry_after_s": decision.retry_after_s}
        key = members[[self._ids[k] for k in members].index(decision.node_id)]
        self.recent.append({"token": token, "prompt_tokens": prompt_tokens, "node": key, "pab_seen": seen})
        self._reservations[token] = key
        self.decisions["placed"] += 1
        return {"node": key, "reason": decision.reason, "retry_after_s": None}

    def release(self, token: str) -> None:
        """The reserved request finished, failed or was never sent; unknown tokens are ignored."""
        key = self._reservations.pop(token, None)
        if key is None or self._policy is None or key not in self._members:
            return
        node_id = self._ids[key]
        if self._policy.in_flight.get(node_id, 0) > 0:
            self._policy.on_complete(node_id)

    # -- inspection -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every known node's last report, its view with debits, in-flight count and report age."""
        now = time.monotonic()
        nodes = {}
        for key, nv in self._views.items():
            row = {k: getattr(nv, k) for k in _VIEW_FIELDS}
            if self._policy is not None and key in self._members:
                debited = self._policy.view(nv.node_id)
                row["pab_tokens_debited"] = debited.pab_tokens
                row["in_flight"] = debited.in_flight
            row["report_age_s"] = now - self._received_at[key]
            row["live"] = row["report_age_s"] <= self.stale_after_s
            row.update(self._extra.get(key, {}))
            nodes[key] = row
        return {
            "balancer": self.balancer,
            "nodes": nodes,
            "reservations": len(self._reservations),
            "deployment_model": self.deployment_model(),
            "decisions": dict(self.decisions),
            "recent": list(self.recent),
        }

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
