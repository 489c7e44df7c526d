"""The serving layer's logic without a cluster: the registry, the local balancer's accounting, the router's hook, config, live reports."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import types
from types import SimpleNamespace

import pytest
import yaml

from balancer.core.placement import NodeView
from balancer.serve.pab_registry import NodeReport, PABRegistry, RouterPoll
from node.core.step_time import StepTimeModel
from cluster.workload.loadgen import LiveRecord, live_report
from node.core.request import SLO

pytestmark = [pytest.mark.serve, pytest.mark.timeout(60)]


def _report(reg: PABRegistry, key: str, pab: float, at: float = 1.0, received_ids=None) -> None:
    reg.report(key, NodeReport(NodeView(0, pab_tokens=pab, prefill_rate_tps=1000.0, reported_at_s=at,
                                        received_ids=None if received_ids is None else frozenset(received_ids))))


def test_registry_serves_the_latest_report_of_each_live_node(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("balancer.serve.pab_registry.time.monotonic", lambda: clock[0])
    reg = PABRegistry(stale_after_s=5.0)
    _report(reg, "a", 1000, received_ids=["r1"])
    _report(reg, "b", 3000)
    _report(reg, "a", 800, at=2.0, received_ids=["r1", "r2"])
    views = reg.poll("router-1", {"placed": 3, "rejected": 1}).views
    assert views["a"].pab_tokens == 800 and views["a"].received_ids == {"r1", "r2"}
    assert set(views) == {"a", "b"}
    clock[0] += 4.0
    _report(reg, "b", 2000, at=3.0)
    clock[0] += 2.0  # a has not reported for 6 s: no longer live
    assert set(reg.poll("router-1", {"placed": 3, "rejected": 1}).views) == {"b"}
    snap = reg.snapshot()
    assert snap["decisions"] == {"placed": 3, "rejected": 1} and not snap["nodes"]["a"]["live"]


def test_registry_counts_the_balancers_that_poll_it(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("balancer.serve.pab_registry.time.monotonic", lambda: clock[0])
    reg = PABRegistry(stale_after_s=3.0)
    _report(reg, "a", 1000)
    assert reg.poll("ingress-1", {}).routers == 1
    assert reg.poll("ingress-2", {}).routers == 2
    clock[0] += 2.0
    _report(reg, "a", 1000, at=2.0)
    assert reg.poll("ingress-1", {}).routers == 2
    clock[0] += 2.0  # ingress-2 has not polled for 4 s: gone
    assert reg.poll("ingress-1", {}).routers == 1


def _refit(b: float, refits: int) -> NodeReport:
    return NodeReport(NodeView(0, pab_tokens=1.0), StepTimeModel(0.01, b, 1e-7), refits)


def test_registry_pools_the_nodes_recent_refits_into_one_deployment_model(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("balancer.serve.pab_registry.time.monotonic", lambda: clock[0])
    reg = PABRegistry(model_max_age_s=30.0)
    # Before any node refits, there is no deployment model (nodes use their own profile).
    assert reg.report("a", _refit(1e-5, 0)) is None
    assert reg.report("a", _refit(2e-4, 1)).b_s_per_token == 2e-4
    reg.report("b", _refit(4e-5, 3))
    reg.report("c", _refit(6e-5, 2))
    shared = reg.report("b", _refit(4e-5, 3))
    assert shared.b_s_per_token == pytest.approx(6e-5)  # the median
    assert reg.snapshot()["deployment_model"] == {**dataclasses.asdict(shared), "nodes": 3}
    # a stops refitting (no traffic): 31 s later only the nodes that still refit count. Reporting
    # the same refit again does not make it new.
    clock[0] += 31.0
    reg.report("a", _refit(2e-4, 1))
    reg.report("b", _refit(5e-5, 4))
    reg.report("c", _refit(7e-5, 3))
    assert reg.deployment_model().b_s_per_token == pytest.approx(6e-5)  # median of 5e-5 and 7e-5
    # A node that stops reporting leaves the pool with its report.
    clock[0] += reg.stale_after_s - 1
    reg.report("b", _refit(5e-5, 5))
    clock[0] += 2
    assert reg.deployment_model().b_s_per_token == pytest.approx(5e-5)


def test_the_pooled_deployment_model_keeps_the_prefill_attention_term():
    reg = PABRegistry(model_max_age_s=30.0)
    for key, e in (("a", 1e-9), ("b", 2e-9), ("c", 3e-9)):
        reg.report(key, NodeReport(NodeView(0, pab_tokens=1.0), StepTimeModel(0.01, 2e-5, 1e-7,
                                                                               attn_prefill_s_per_token_sq=e), 1))
    assert reg.deployment_model().attn_prefill_s_per_token_sq == pytest.approx(2e-9)


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _balancer(name: str = "pab", clock=None, **kw):
    from balancer.serve.admission import BalancerSettings, LocalBalancer

    return LocalBalancer(BalancerSettings(name, **kw), clock=clock or _Clock())


def _view(pab: float, at: float, ids=(), **kw) -> NodeView:
    return NodeView(0, pab_tokens=pab, recovery_tps=100.0, reported_at_s=at, received_ids=frozenset(ids), **kw)


def _burst(lb, prefix: str, n: int, prompt_tokens: int) -> int:
    return sum(lb.admit(f"{prefix}{i}", prompt_tokens)[0] is not None for i in range(n))


def test_two_balancers_together_admit_one_budget_between_reports():
    """Two ingress replicas see the same report (PAB 1000) and a burst each: with the budget shared
    they admit one budget together (each its half, its first placement judged on the whole);
    each seeing the whole, as before, they admitted twice the budget."""
    shared, whole = [], []
    for routers, placed in ((2, shared), (1, whole)):
        for name in ("ingress-1", "ingress-2"):
            lb = _balancer()
            lb.apply_views({"a": _view(1000, 1.0)}, routers=routers)
            placed.append(_burst(lb, name, 20, 100))
    assert shared == [5, 5] and whole == [10, 10]


def test_a_prompt_above_the_share_is_placed_by_a_balancer_with_nothing_in_transit():
    lb = _balancer()
    lb.apply_views({"a": _view(1000, 1.0)}, routers=4)
    assert lb.admit("big", 800)[0] == "a"  # more than the share (250), within the budget
    assert lb.admit("next", 100)[0] is None  # from now on its share: 250 - 800 < 100
    lb.apply_views({"a": _view(1000, 2.0, ids=["big"])})  # the node counts it; the count of routers is kept
    assert lb.stats()["routers"] == 4
    assert lb.admit("again", 800)[0] == "a"


def test_local_balancer_places_debits_and_rejects_without_a_remote_call():
    lb = _balancer()
    node, decision = lb.admit("r0", 10)
    assert node is None and decision.reason == "no-engine"
    lb.apply_views({"a": _view(1000, 1.0), "b": _view(3000, 1.0)})
    assert lb.admit("r1", 1500)[0] == "b"
    assert lb.admit("r2", 1200)[0] == "b"  # b: 1500 left
    assert lb.admit("r3", 400)[0] == "a"  # b: 300 left
    node, decision = lb.admit("r4", 2000)
    assert node is None and decision.reason == "no-budget" and 1.0 <= decision.retry_after_s <= 30.0
    assert lb.stats()["placed"] == 3 and lb.stats()["rejected"] == 2  # the no-engine one and r4


def test_repeated_routing_stats_never_wipe_the_routers_own_debits():
    """The old fallback re-applied stats per request: four 300-token prompts all went to the 900 node."""
    lb = _balancer()
    stats = {"a": _view(200, 1.0), "b": _view(900, 1.0)}
    placed = []
    for i in range(4):
        lb.apply_views(stats)  # the same (stale) stats before every decision
        placed.append(lb.admit(f"r{i}", 300)[0])
    assert placed == ["b", "b", "b", None]


def test_a_debit_survives_fresh_reports_until_the_replica_lists_the_request():
    lb = _balancer()
    lb.apply_views({"a": _view(1000, 1.0)})
    lb.admit("r1", 600)
    lb.apply_views({"a": _view(1000, 2.0)})  # measured before r1 arrived
    assert lb.admit("r2", 500)[0] is None  # 400 left, not 1000
    lb.apply_views({"a": _view(400, 3.0, ids=["r1"])})  # the replica now counts r1 itself
    assert lb.stats()["nodes"]["a"]["in_transit"] == 0
    assert lb.admit("r2", 400)[0] == "a"


def test_with_prefix_caching_a_turn_goes_back_to_its_node_and_is_charged_its_new_tokens():
    """The engines cache prefixes (block of 16): the balancer hashes each prompt, sends the next turn of a
    conversation to the node holding its head while budgets allow, and debits only the rest there; the
    node's KV capacity bounds what the estimate keeps."""
    lb = _balancer(prefix_block_tokens=16)
    lb.apply_views({"a": _view(3000, 1.0, kv_capacity_tokens=1 << 20), "b": _view(3000, 1.0, kv_capacity_tokens=64)})
    first = list(range(100))
    hashes = lb.block_hashes(first)
    assert len(hashes) == 6 and lb.block_hashes(first[:40]) == hashes[:2]
    node, _ = lb.admit("t1", len(first), block_hashes=hashes)
    second = first + list(range(500, 600))
    other = "b" if node == "a" else "a"
    lb.apply_views({node: _view(2950, 2.0, ids=["t1"], kv_capacity_tokens=1 << 20),  # less budget, less charge
                    other: _view(3000, 2.0, kv_capacity_tokens=1 << 20)})
    where, decision = lb.admit("t2", len(second), block_hashes=lb.block_hashes(second))
    assert where == node and decision.charged_tokens == 200 - 96  # six cached blocks of 16
    stats = lb.stats()
    assert stats["prompt_tokens_placed"] == 300 and stats["prompt_tokens_charged"] == 100 + 104
    assert _balancer().block_hashes(first) == ()  # engines without prefix caching: every token is charged
    # a node's KV capacity (tokens) bounds the blocks the estimate keeps for it
    small = _balancer(prefix_block_tokens=16)
    small.apply_views({"b": _view(3000, 1.0, kv_capacity_tokens=64)})
    small.admit("t1", len(first), block_hashes=small.block_hashes(first))
    assert small._policy.prefix_index.blocks_held(0) == 4


def test_serve_config_gives_the_engines_block_size_when_they_cache_prefixes():
    from cluster.config import ServeConfig

    assert ServeConfig().prefix_block_tokens is None  # the embedded default turns prefix caching off
    on = {**ServeConfig().engine_args, "enable_prefix_caching": True}
    assert ServeConfig(engine_args=on).prefix_block_tokens == 32
    assert ServeConfig(engine_args=on).balancer_settings().prefix_block_tokens == 32
    assert ServeConfig(engine_args={"max_model_len": 2048}).prefix_block_tokens == 128  # vLLM's CPU default
    assert ServeConfig(engine_args={}, engine_num_gpus=1.0).prefix_block_tokens == 16  # vLLM's GPU default


def test_released_on_disconnect_before_and_after_the_first_token():
    lb = _balancer()
    lb.apply_views({"a": _view(1000, 1.0)})
    lb.admit("before", 300)
    lb.admit("after", 300)
    lb.apply_views({"a": _view(400, 2.0, ids=["after"])})
    assert lb.release("before") and lb.release("after") and not lb.release("after")
    assert lb.stats()["nodes"]["a"]["in_flight"] == 0 and lb.stats()["nodes"]["a"]["in_transit"] == 0
    assert lb.placement("after") is None
    lb.apply_views({"a": _view(1000, 3.0)})  # the next report: no debit of either is left
    assert lb.stats()["nodes"]["a"]["pab_tokens_debited"] == 1000


def test_a_retried_request_keeps_its_admission_on_another_replica():
    lb = _balancer()
    lb.apply_views({"a": _view(1000, 1.0), "b": _view(100, 1.0)})
    assert lb.admit("r", 900)[0] == "a"
    assert lb.admit("r", 900)[0] == "a"  # asked again: same placement, debited once
    assert lb.move("r", ["b"]) == "b"  # a died: b takes it although its budget is short
    assert lb.placement("r") == "b" and lb.stats()["nodes"]["b"]["in_flight"] == 1


def test_a_registry_restart_never_opens_a_503_window():
    """The view outlives the registry: decisions go on from the last reports, then from fresh ones."""
    clock = _Clock()
    answers = [{"a": _view(5000, 1.0)}, RuntimeError("registry restarting"), RuntimeError("registry restarting"),
               {"a": _view(4000, 9.0)}]
    from balancer.serve.admission import BalancerSettings, LocalBalancer

    def fetch(_stats):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return RouterPoll(answer, 1)

    lb = LocalBalancer(BalancerSettings("pab", stale_after_s=2.0), fetch, clock=clock)
    poll = lb.refresh_once

    poll()
    assert lb.registry_ok and lb.admit("r1", 100)[0] == "a"
    clock.t += 1.0
    poll()  # registry down: the last view still decides
    assert lb.admit("r2", 100)[0] == "a"
    clock.t += 1.5
    poll()
    assert not lb.registry_ok  # the router now feeds Serve's routing stats (see the router test)
    lb.apply_views({"a": _view(3000, 5.0)})  # routing stats of the replica
    assert lb.admit("r3", 100)[0] == "a"
    poll()  # registry back, rebuilt from the next report
    assert lb.admit("r4", 100)[0] == "a" and lb.refresh_failures == 2


def test_the_registrys_last_answer_and_its_nodes_go_stale_together():
    """When the last answer's nodes go stale the registry counts as away too, however long applying
    the answer took: a request then goes to the router (routing stats), never to a 503 (seen live: a
    503 1.97 s after the registry was killed, its last answer 2 s old)."""
    from balancer.serve.admission import BalancerSettings, LocalBalancer

    clock = {"now": 0.0, "readings": []}

    def fetch(_stats):
        clock["readings"] = [0.0, 0.05]  # applying the answer spans 50 ms of clock readings
        return RouterPoll({"a": _view(5000, 1.0)}, 1)

    lb = LocalBalancer(BalancerSettings("pab", stale_after_s=2.0), fetch,
                       clock=lambda: clock["readings"].pop(0) if clock["readings"] else clock["now"])
    assert lb.refresh_once()
    clock["readings"] = []
    clock["now"] = 1.99
    assert lb.live_keys() == ["a"] and lb.registry_ok
    clock["now"] = 2.01
    assert lb.live_keys() == [] and not lb.registry_ok
    node, decision = lb.admit("r", 100)
    assert node is None and decision.reason == "no-engine" and not lb.registry_ok


def test_early_refusal_uses_a_small_prompt_of_recent_traffic():
    lb = _balancer()
    lb.apply_views({"a": _view(5000, 1.0)})
    lb._fetched_at = lb._clock()
    for i in range(20):
        lb.admit(f"r{i}", 512 if i % 10 else 100)  # mostly 512-token prompts, a few of 100
        lb.release(f"r{i}")
    assert lb.small_prompt_tokens() == 100  # the 5th percentile
    lb.apply_views({"a": _view(300, 2.0)})  # a 512-token prompt no longer fits, a 100-token one does
    assert lb.refusal_before_parsing() is None
    lb.apply_views({"a": _view(80, 3.0)})
    assert lb.refusal_before_parsing() is not None
    strict = _balancer(early_refusal_quantile=None)
    strict.apply_views({"a": _view(80, 1.0)})
    strict._fetched_at = strict._clock()
    strict.admit("big", 512)
    assert strict.refusal_before_parsing() is None  # only when not even one token fits


def test_a_refusal_of_the_tightest_class_at_one_ingress_sheds_the_looser_ones_at_every_ingress(monkeypatch):
    """Two ingress replicas: A refuses an interactive request; its next poll tells the registry, and B
    sheds batch from its own next poll on, for the rest of the window."""
    reg_clock = [100.0]
    monkeypatch.setattr("balancer.serve.pab_registry.time.monotonic", lambda: reg_clock[0])
    reg = PABRegistry(stale_after_s=3.0)
    _report(reg, "a", 300)
    clock = _Clock()
    settings = dict(tier_shed_s=2.0, tightest_class="interactive", class_ttft_slo_s={"interactive": 2.0, "batch": 30.0})
    a, b = _balancer(clock=clock, **settings), _balancer(clock=clock, **settings)
    for name, lb in (("A", a), ("B", b)):
        answer = reg.poll(name, lb.stats())
        assert answer.tightest_refused_age_s is None
        lb.apply_views(answer.views, answer.routers, answer.tightest_refused_age_s)
    assert a.admit("i1", 500)[0] is None  # A refuses an interactive request
    assert b.shed_before_parsing("batch") is None  # B does not know yet
    clock.t += 0.1
    reg_clock[0] += 0.1
    answer = reg.poll("A", a.stats())
    assert answer.tightest_refused_age_s == pytest.approx(0.1)
    clock.t += 0.1
    reg_clock[0] += 0.1
    answer = reg.poll("B", b.stats())
    assert answer.tightest_refused_age_s == pytest.approx(0.2)
    b.apply_views(answer.views, answer.routers, answer.tightest_refused_age_s)
    wait = b.shed_before_parsing("batch")
    assert wait is not None and wait == pytest.approx(1.8)  # the rest of A's window
    assert b.admit("b1", 10, tier="batch")[1].reason == "shed-looser-tier"
    clock.t += 2.0
    assert b.shed_before_parsing("batch") is None  # the window is over


def test_a_shed_class_is_refused_from_its_header_before_the_body_is_read():
    clock = _Clock()
    lb = _balancer(clock=clock, tier_shed_s=2.0, tightest_class="interactive",
                   class_ttft_slo_s={"interactive": 2.0, "batch": 30.0})
    lb.apply_views({"a": _view(300, 1.0)})
    assert lb.shed_before_parsing("batch") is None  # nothing refused yet
    assert lb.admit("i1", 500)[0] is None  # an interactive request refused: batch is shed for 2 s
    wait = lb.shed_before_parsing("batch")
    assert wait is not None and 1.0 <= wait <= 2.0
    assert lb.shed_before_parsing("interactive") is None and lb.shed_before_parsing("") is None
    assert lb.shed_before_parsing("gold") is None  # not a class: the route answers it (400)
    clock.t += 2.5
    assert lb.shed_before_parsing("batch") is None
    lb.refused_early("batch")  # a looser class refused early: nothing shed
    assert lb.shed_before_parsing("batch") is None
    lb.refused_early("interactive")  # the tightest refused early (no budget for a small prompt): shed as well
    assert lb.shed_before_parsing("batch") is not None
    clock.t += 2.5
    unnamed = _balancer(clock=clock, tier_shed_s=2.0, tightest_class="interactive", default_class="interactive",
                        class_ttft_slo_s={"interactive": 2.0, "batch": 30.0})
    unnamed.apply_views({"a": _view(300, 1.0)})
    unnamed.refused_early("")  # no header: the default class, here the tightest
    assert unnamed.shed_before_parsing("batch") is not None


def test_a_node_that_stops_reporting_takes_no_new_requests():
    clock = _Clock()
    lb = _balancer(clock=clock, stale_after_s=2.0)
    lb.apply_views({"a": _view(1000, 1.0), "b": _view(5000, 1.0)})
    clock.t += 1.5
    lb.apply_views({"a": _view(1000, 2.0)})
    clock.t += 1.0  # b silent for 2.5 s
    assert lb.live_keys() == ["a"] and lb.admit("r", 2000)[0] is None and lb.admit("s", 500)[0] == "a"


def test_a_views_kv_limit_and_budget_share_survive_the_routing_stats_round_trip():
    from balancer.serve.pab_registry import view_from_dict

    view = NodeView(3, pab_tokens=100.0, kv_capacity_tokens=4096, kv_pab_tokens=1234.5, budget_share=0.5,
                    expected_output_tokens=87.5,
                    tier_pab_tokens={"batch": 900.0}, received_ids=frozenset({"a"}))
    back = view_from_dict(3, json.loads(json.dumps(_routing_stats(view))))
    assert back == view


def _routing_stats(view: NodeView) -> dict:
    from node.serve.engine_replica import _view_json

    return _view_json(view)


class _FakeReplica:
    def __init__(self, key: str, stats: dict):
        self.replica_id = SimpleNamespace(unique_id=key)
        # Serve's routing stats: JSON, as EngineReplica.record_routing_stats returns them
        self.routing_stats = _routing_stats(stats) if isinstance(stats, NodeView) else stats


def _pending(prompt_tokens: int, rid: str = "req-1"):
    from ray.serve.request_router import PendingRequest

    meta = SimpleNamespace(call_method="generate", internal_request_id=f"serve-{rid}", multiplexed_model_id="")
    from node.serve.messages import COMPLETION, EngineJob

    job = EngineJob(request_id=rid, prompt_tokens=prompt_tokens, arrival_s=0.0, ttft_slo_s=1.0,
                    kind=COMPLETION, request=None)
    return PendingRequest(args=[job], kwargs={}, metadata=meta)


def _router(lb, **state):
    from balancer.serve.router import PABRequestRouter

    router = PABRequestRouter.__new__(PABRequestRouter)  # the hook alone, without Serve's plumbing
    router.initialize_state(**state)
    router._balancer = lb
    return router


def test_router_sends_an_admitted_request_to_its_replica_and_releases_it_when_done():
    async def go():
        lb = _balancer()
        lb.apply_views({"a": _view(5000, 1.0), "b": _view(100, 1.0)})
        lb._fetched_at = lb._clock()
        assert lb.admit("req-1", 300)[0] == "a"
        router = _router(lb)
        a, b = _FakeReplica("a", {}), _FakeReplica("b", {})
        assert await router.choose_replicas([a, b], _pending(300)) == [[a]]
        # The ingress admitted it, so the ingress releases it: a failed attempt's completion does
        # not take the admission its retry keeps.
        router.on_request_completed(a.replica_id, "serve-req-1")
        assert lb.placement("req-1") == "a"
        lb.release("req-1")
        assert lb.placement("req-1") is None
        # Its replica gone (Serve retries elsewhere): the call moves, keeping its admission.
        lb.admit("req-2", 4000)
        assert await router.choose_replicas([b], _pending(4000, "req-2")) == [[b]]
        # A replica that has not reported yet is all Serve can reach: Serve picks, the admission stays.
        c = _FakeReplica("c", {})
        assert await router.choose_replicas([c], _pending(4000, "req-2")) == [[c]]
        assert lb.placement("req-2") == "b" and lb.stats()["placed"] == 2

    asyncio.run(go())


def test_router_releases_what_it_admitted_itself_and_keeps_one_id_per_call():
    async def go():
        lb = _balancer()
        lb.apply_views({"a": _view(5000, 1.0)})
        lb._fetched_at = lb._clock()
        router = _router(lb)
        a = _FakeReplica("a", {})
        pr = _pending(300)
        pr.args[0] = "a direct handle call"  # not an EngineJob: no ingress id, one prompt token charged
        assert await router.choose_replicas([a], pr) == [[a]]
        assert await router.choose_replicas([a], pr) == [[a]]  # asked again (backoff): no second debit
        assert lb.stats()["placed"] == 1 and lb.placement("serve-req-1") == "a"
        router.on_request_completed(a.replica_id, "serve-req-1")
        assert lb.placement("serve-req-1") is None

    asyncio.run(go())


def test_router_admits_a_direct_call_from_routing_stats_and_fails_it_with_429():
    from ray.serve.exceptions import BackPressureError

    async def go():
        router = _router(_balancer())  # no registry view at all: the replicas' routing stats decide
        a = _FakeReplica("a", _view(200, 1.0))
        b = _FakeReplica("b", _view(900, 1.0))
        assert await router.choose_replicas([a, b], _pending(300)) == [[b]]
        pr = _pending(5000, "req-2")
        chosen = await router.choose_replicas([a, b], pr)
        assert pr.future.done() and len(chosen) == 1  # Serve sees the request done; nothing is sent
        exc = pr.future.exception()
        assert isinstance(exc, BackPressureError) and exc.status_code == 429 and 1.0 <= exc.retry_after_s <= 30.0

    asyncio.run(go())


def test_router_waits_with_backoff_before_rejecting_when_asked_to():
    async def go():
        router = _router(_balancer(), admission_wait_s=30.0)
        a = _FakeReplica("a", _view(10.0, 1.0))
        pr = _pending(5000)
        assert await router.choose_replicas([a], pr) == []
        assert pr.routing_context.should_backoff and not pr.future.done()

    asyncio.run(go())


def test_config_file_errors_name_the_key_and_the_file(tmp_path):
    from cluster.config import ConfigError, load_config

    def serve_doc(args: dict, **http) -> dict:
        return {"http_options": http, "applications": [
            {"name": "fb", "route_prefix": "/", "import_path": "cluster.app:app_builder", "args": args}]}

    good = tmp_path / "c.yaml"
    good.write_text(yaml.safe_dump(serve_doc({"engines": 3, "router": "serve-default"}, port=8111)))
    cfg = load_config(good)
    assert (cfg.engines, cfg.router, cfg.url, cfg.app_name) == (3, "serve-default", "http://127.0.0.1:8111", "fb")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(serve_doc({"engines": 2, "balancr": "pab"})))
    with pytest.raises(ConfigError, match=r"bad\.json.*balancr"):
        load_config(bad)
    bad.write_text(json.dumps(serve_doc({"ttft_slo_s": -1})))
    with pytest.raises(ConfigError, match="ttft_slo_s"):
        load_config(bad)
    bad.write_text(json.dumps(serve_doc({"admission_wait_order": "lifo"})))
    with pytest.raises(ConfigError, match="admission_wait_order.*edf, arrival, fifo"):
        load_config(bad)
    bad.write_text(json.dumps(serve_doc({"admission_wait_s": 0.5, "router": "serve-default"})))
    with pytest.raises(ConfigError, match="admission_wait_s.*router: pab"):
        load_config(bad)
    bad.write_text(json.dumps(serve_doc({"port": 9000}, port=8111)))
    with pytest.raises(ConfigError, match="port.*disagrees"):
        load_config(bad)
    flat = tmp_path / "flat.yaml"  # the keys without the Serve config around them
    flat.write_text("engines: 3\n")
    with pytest.raises(ConfigError, match=r"flat\.yaml: not a Ray Serve config.*applications\[\]\.args"):
        load_config(flat)


def test_live_report_counts_429_as_rejected_and_broken_streams_as_dropped():
    slo = SLO(1.0, 0.1)
    ok = LiveRecord(0, 0.0, 10, 3, status=200, token_times=[0.5, 0.6, 0.7], finish_reason="length")
    late = LiveRecord(1, 0.0, 10, 3, status=200, token_times=[1.5, 1.6, 1.7], finish_reason="length")
    rej = LiveRecord(2, 0.1, 10, 3, status=429)
    broken = LiveRecord(3, 0.2, 10, 3, status=200, token_times=[0.4], error="stream error: engine failed")
    rep = live_report([ok, late, rej, broken], slo, offered_span_s=0.2)
    assert rep["requests"] == 4 and rep["rejected"] == 1 and rep["dropped"] == 1
    assert rep["attainment"] == 0.25 and rep["admitted_attainment"] == pytest.approx(1 / 3)
    for key in ("ttft_p50", "ttft_p90", "ttft_p99", "tpot_p50", "tpot_p99", "goodput_rps"):
        assert key in rep


def test_arrival_is_a_front_proxys_stamp_when_plausible():
    from cluster.http.api import arrival_stamp

    now = 1_800_000_000.0
    assert arrival_stamp({}, now) == now
    assert arrival_stamp({"x-request-start": "t=1799999999500"}, now) == pytest.approx(now - 0.5)  # ms
    assert arrival_stamp({"x-request-start": "1799999998.25"}, now) == pytest.approx(now - 1.75)  # s
    assert arrival_stamp({"x-request-start": "t=1799999999900000"}, now) == pytest.approx(now - 0.1)  # us
    assert arrival_stamp({"x-request-start": "t=1800000100000"}, now) == now  # in the future: ignored
    assert arrival_stamp({"x-request-start": "t=1700000000000"}, now) == now  # days old: ignored
    assert arrival_stamp({"x-request-start": "soon"}, now) == now
    assert arrival_stamp({"x-request-start": "t=1799999999500"}, now, trusted=False) == now  # not trusted: now


def test_an_overloaded_ingress_refuses_before_reading_the_body(monkeypatch):
    from fastapi.testclient import TestClient

    from balancer.serve import admission
    from cluster.http.api import make_fastapi_app

    lb = _balancer()
    lb.apply_views({"a": _view(-5000, 1.0, slots_free=3)})
    lb._fetched_at = lb._clock()
    monkeypatch.setattr(admission, "_BALANCERS", {("app", "engine"): lb})
    app = make_fastapi_app()
    reached = []

    @app.post("/v1/completions")
    async def completions(body: dict):
        reached.append(body)
        return {"ok": True}

    client = TestClient(app)
    r = client.post("/v1/completions", content=b"{not even json")
    err = r.json()["error"]
    assert r.status_code == 429 and err["type"] == "RateLimitError" and "admission_rejected" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 30 and not reached
    lb.apply_views({"a": _view(5000, 2.0, slots_free=3)})  # budget back: requests reach the route again
    assert client.post("/v1/completions", json={"x": 1}).status_code == 200 and reached
    # A request that waited half its TTFT SLO (default 2 s) in front of admission is shed unread.
    import time

    stale = {"x-request-start": f"t={(time.time() - 1.5) * 1e3:.0f}"}
    assert client.post("/v1/completions", json={"x": 2}, headers=stale).status_code == 429
    assert client.post("/v1/completions", json={"x": 3}, headers={**stale, "x-slo-ttft-ms": "5000"}).status_code == 200
    assert len(reached) == 2


def test_api_keys_and_body_limit_middleware():
    """API keys (only their digests held) guard /v1 and the tokenizer routes, not /health; bodies over the limit: 413."""
    from fastapi.testclient import TestClient

    from cluster.http.api import key_digests, make_fastapi_app

    app = make_fastapi_app(early_refusal=False, api_key_sha256=key_digests(["k1", "k2"]), max_body_bytes=2048)

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.post("/v1/completions")
    async def completions(body: dict):
        return {"ok": True}

    client = TestClient(app)
    assert client.get("/health").status_code == 200
    for headers in ({}, {"authorization": "Bearer k3"}, {"authorization": "Basic k1"}, {"authorization": "k1"}):
        r = client.post("/v1/completions", json={}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError", headers
    for key in ("k1", "k2"):
        assert client.post("/v1/completions", json={}, headers={"authorization": f"Bearer {key}"}).status_code == 200
    assert client.post("/tokenize", json={}).status_code == 401
    big = {"prompt": "w1 " * 1000}
    r = client.post("/v1/completions", json=big, headers={"authorization": "Bearer k1"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413
    # Sent in chunks, with no Content-Length: counted as it arrives, refused with 413 (not FastAPI's 400).
    import json

    def chunks():
        data = json.dumps(big).encode()
        for i in range(0, len(data), 512):
            yield data[i:i + 512]

    r = client.post("/v1/completions", content=chunks(),
                    headers={"authorization": "Bearer k1", "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == 413, r.text


def test_api_key_digests_in_the_config_are_checked():
    from cluster.http.api import key_digests
    from cluster.config import ConfigError, ServeConfig

    (digest,) = key_digests(["k1"])
    assert ServeConfig(api_key_sha256=[digest.upper()]).api_key_sha256 == [digest.upper()]
    for bad in (["k1"], [digest[:-1]], [digest[:-1] + "g"], digest):
        with pytest.raises(ConfigError, match="api_key_sha256"):
            ServeConfig(api_key_sha256=bad)


def test_capacity_ramp_runs_a_missed_rate_once_more_and_stops_at_a_second_miss(monkeypatch):
    """``measure_capacity`` with a scripted load run (a fake of ``run_rate``: attainment per call)."""
    from cluster.bench import overload

    script = {2.0: [1.0], 4.0: [0.4, 0.95], 6.0: [0.5, 0.6], 8.0: [1.0]}
    calls: list[float] = []

    def scripted_run_rate(url, model, rate, cfg, *, seed):
        calls.append(rate)
        return {"rate_rps": rate, "attainment": script[rate].pop(0), "mean_in_flight": rate}

    monkeypatch.setattr(overload, "run_rate", scripted_run_rate)
    monkeypatch.setattr(overload.time, "sleep", lambda s: None)
    cfg = overload.OverloadConfig(ramp_rps=(2.0, 4.0, 6.0, 8.0))
    capacity, rows = overload.measure_capacity("http://x", "m", cfg, progress=lambda m: None)
    assert capacity == 4.0  # the transient miss at 4 req/s did not end the ramp; 6 missed twice
    assert calls == [2.0, 4.0, 4.0, 6.0, 6.0] and len(rows) == 5


@pytest.mark.parametrize("bad, key", [
    ({"node_config": {"refit_windw": 64}}, "node_config"),
    ({"node_config": {"refit_window": "x"}}, "node_config"),
    ({"node_config": {"knobs": {"tpot_margn": 0.1}}}, "node_config"),
    ({"node_config": {"ttft_slo_s": 5.0}}, "node_config"),  # the ingress would hold requests to another SLO
    ({"feedback": {"target_ratoi": 0.7}}, "feedback"),
    ({"balancer_knobs": {"fitt": "best"}}, "balancer_knobs"),
    ({"profile": "no-such-profile"}, "profile"),
])
def test_the_config_builds_what_the_engines_and_routers_get_when_it_is_read(bad, key):
    """A knob the engines, the closed loop or the balancer would refuse fails when the file is read,
    naming it, not when every replica starts."""
    from cluster.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=rf"^f\.yaml: {key}: "):
        config_from_dict(bad, "f.yaml")


def test_the_engines_get_the_deployments_profile_slos_and_anchor():
    from cluster.config import ServeConfig

    spec = ServeConfig(ttft_slo_s=3.0, node_config={"knobs": {"tpot_margin": 0.1}}).engine_spec()
    node = spec.node_config
    assert (node.profile, node.ttft_slo_s, node.tpot_slo_s) == ("cpu-tiny-llama", 3.0, 0.25)  # TPOT: the profile's
    assert node.knobs == {"anchor": "first-token", "tpot_margin": 0.1}
    assert spec.feedback.cooldown_s == 3.0
    assert ServeConfig(scheduler="vllm").engine_spec().node_config is None


def test_a_live_run_with_slo_tiers_scores_each_request_by_the_slo_it_was_sent_with():
    interactive, batch = SLO(1.0, 0.05, tier="interactive"), SLO(30.0, 0.25, tier="batch", priority=1)
    late = [1.5, 1.6, 1.7]  # a first token after 1.5 s: late for interactive, on time for batch
    recs = [LiveRecord(0, 0.0, 10, 3, status=200, token_times=late, finish_reason="length", slo=interactive),
            LiveRecord(1, 0.0, 10, 3, status=200, token_times=late, finish_reason="length", slo=batch),
            LiveRecord(2, 0.1, 10, 3, status=429, slo=batch)]
    rep = live_report(recs, SLO(2.0, 0.25), offered_span_s=0.1)
    assert rep["attainment"] == pytest.approx(1 / 3)
    assert rep["per_tier"]["interactive"]["attainment"] == 0.0
    assert rep["per_tier"]["batch"]["attainment"] == 0.5 and rep["per_tier"]["batch"]["rejected"] == 1


# -- SLO classes at the ingress ---------------------------------------------------------------------

TIERED = dict(slo_tiers={"interactive": {"ttft_slo_s": 1.0, "tpot_slo_s": 0.05, "min_tpot_slo_s": 0.02},
                         "batch": {"ttft_slo_s": 30.0, "tpot_slo_s": 0.25}},
              default_slo_tier="batch", tier_hold_fraction=0.2)


def test_a_request_gets_its_classs_slo_and_may_loosen_it_within_bounds():
    from cluster.config import ServeConfig
    from cluster.http.api import APIError, request_slo

    cfg = ServeConfig(**TIERED)
    classes, default = cfg.slo_classes(), cfg.slo
    assert default == SLO(30.0, 0.25, tier="batch", priority=1)  # the default class's
    assert cfg.tightest_slo == SLO(1.0, 0.05, tier="interactive", priority=0)
    assert request_slo({}, {}, default, classes) == default
    assert request_slo({}, {"x-slo-class": "interactive"}, default, classes) == cfg.tier_slos()["interactive"]
    # the body's class wins over the header's; targets override within the class's bounds
    slo = request_slo({"slo_class": "interactive", "tpot_slo_s": 0.03}, {"x-slo-class": "batch",
                                                                        "x-slo-ttft-ms": "1500"}, default, classes)
    assert slo == SLO(1.5, 0.03, tier="interactive", priority=0)
    assert classes.held_fraction(slo) == 0.0 and classes.budget_tier(slo) is None
    batch = request_slo({}, {}, default, classes)
    assert classes.held_fraction(batch) == 0.2 and classes.budget_tier(batch) == "batch"
    for xargs, headers, param, words in [
        ({}, {"x-slo-class": "gold"}, "x-slo-class", "unknown SLO class 'gold'; this deployment has: interactive, batch"),
        ({"slo_class": "gold"}, {}, "vllm_xargs.slo_class", "'gold'"),
        ({"slo_class": 3}, {}, "vllm_xargs.slo_class", "must be a string"),
        ({}, {"x-slo-ttft-ms": "500"}, "x-slo-ttft-ms", "allows no less than 30 s"),  # batch may not ask 0.5 s
        ({"slo_class": "interactive", "tpot_slo_s": 0.01}, {}, "vllm_xargs.tpot_slo_s", "no less than 0.02 s"),
    ]:
        with pytest.raises(APIError) as err:
            request_slo(xargs, headers, default, classes)
        assert err.value.status == 400 and err.value.param == param and words in err.value.message, err.value.message
    # without classes, naming one is a 400 too
    with pytest.raises(APIError, match="no SLO classes"):
        request_slo({}, {"x-slo-class": "batch"}, SLO(2.0, 0.25), None)


@pytest.mark.parametrize("bad,words", [
    (dict(TIERED, default_slo_tier=None), "default_slo_tier: set it"),
    (dict(TIERED, default_slo_tier="gold"), "'gold' is not one of"),
    (dict(TIERED, ttft_slo_s=2.0), "leave these unset"),
    (dict(slo_tiers={"a b": {"ttft_slo_s": 1.0, "tpot_slo_s": 0.1}}, default_slo_tier="a b"), "class names"),
    (dict(slo_tiers={"a": {"ttft_slo_s": 1.0, "tpot_slo_s": 0.1, "min_ttft_slo_s": 2.0}}, default_slo_tier="a"),
     "min_ttft_slo_s (2.0) is above"),
    (dict(TIERED, tier_hold_fraction=1.0), "tier_hold_fraction"),
    (dict(TIERED, tier_shed_s=-1.0), "tier_shed_s"),
])
def test_a_malformed_tier_config_is_refused_naming_the_key(bad, words):
    from cluster.config import ConfigError, ServeConfig

    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        ServeConfig(**bad)


def test_engines_budget_for_the_tightest_class():
    from cluster.config import ServeConfig

    spec = ServeConfig(**TIERED).engine_spec()
    assert (spec.ttft_slo_s, spec.tpot_slo_s) == (30.0, 0.25)  # a request without SLO in extra_args: the default
    assert spec.slo_tiers["interactive"].priority == 0 and spec.tier_hold_fraction == 0.2
    assert ServeConfig(**TIERED).feedback_config().cooldown_s == 1.0  # the tightest TTFT


def test_looser_classes_are_shed_for_the_tightest_ttft_after_its_refusal_by_default():
    from cluster.config import ServeConfig

    assert ServeConfig(**TIERED).balancer_settings().tier_shed_s == 1.0  # the tightest class's TTFT
    assert ServeConfig(**TIERED).balancer_settings().tightest_class == "interactive"
    assert ServeConfig(**TIERED).balancer_settings().default_class == "batch"
    assert ServeConfig(**TIERED, tier_shed_s=5).balancer_settings().tier_shed_s == 5
    assert ServeConfig(**TIERED, tier_shed_s=0).balancer_settings().tier_shed_s is None  # off
    assert ServeConfig().balancer_settings().tier_shed_s is None  # no classes: nothing to shed
    policy = ServeConfig(**TIERED).balancer_settings().make_policy([0])
    assert policy.tier_shed_s == 1.0


@pytest.mark.parametrize("message", [
    {"role": "system", "content": []}, {"role": "developer", "content": []}, {"role": "user", "content": []},
    {"role": "assistant", "content": []}, {"role": "tool", "tool_call_id": "c1", "content": []},
])
def test_one_shot_iterators_in_chat_messages_are_listed_so_the_request_travels(message):
    """vLLM's chat model keeps an empty content list as a pydantic ValidatorIterator: read once, never
    pickled (the ingress's call to the engine failed with a TypeError, a 503). Listed, it is both."""
    import pickle

    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from cluster.http.api import listed_iterables

    request = ChatCompletionRequest.model_validate({"model": "m", "messages": [message, {"role": "user", "content": "hi"}]})
    listed_iterables(request.messages)
    again = pickle.loads(pickle.dumps(request))
    assert again.messages[0]["content"] == [] and again.messages[1]["content"] == "hi"
    nested = {"a": iter([1, {"b": iter([2])}]), "s": "text"}
    assert listed_iterables(nested) == {"a": [1, {"b": [2]}], "s": "text"}


def test_lower_children_priority_raises_each_childs_niceness_up_to_19():
    import subprocess
    import sys

    import psutil

    from node.serve.engine_replica import lower_children_priority

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        base = psutil.Process(child.pid).nice()
        assert child.pid in lower_children_priority(3)
        assert psutil.Process(child.pid).nice() == min(19, base + 3)
        lower_children_priority(40)
        assert psutil.Process(child.pid).nice() == 19
    finally:
        child.kill()
        child.wait()


def _empty_node(clock):
    """A balancer on the fake ``clock`` whose one node ("a") has no budget yet, refreshed every 10 ms."""
    lb = _balancer(clock=clock, refresh_interval_s=0.01)
    lb.apply_views({"a": _view(0, 1.0)})
    return lb


def _held_admissions(order: str):
    """A balancer whose one node has no budget, a batch request (TTFT 30 s) held, then an interactive
    one (TTFT 1 s) held behind it; the node then reports room for one of the two."""
    from balancer.serve.admission import HeldAdmissions

    async def go():
        clock = _Clock()
        lb = _empty_node(clock)
        held = HeldAdmissions(lb, wait_s=0.5, order=order, clock=clock)
        batch = asyncio.create_task(held.admit("batch", 800, clock.t, 30.0))
        await asyncio.sleep(0)
        interactive = asyncio.create_task(held.admit("interactive", 800, clock.t, 1.0))
        await asyncio.sleep(0.05)
        assert not batch.done() and not interactive.done() and len(held.queue) == 2
        lb.apply_views({"a": _view(1000, 2.0)})
        await asyncio.sleep(0.05)
        first = "interactive" if interactive.done() else "batch" if batch.done() else None
        clock.t += 1.0  # past both waits: the one still held is refused with the node's last refusal
        await asyncio.sleep(0.05)
        results = {"batch": batch.result(), "interactive": interactive.result()}
        assert not held.queue
        return first, results

    return asyncio.run(go())


def test_the_ingress_queue_places_the_earliest_first_token_deadline_first():
    first, results = _held_admissions("edf")
    assert first == "interactive" and results["interactive"][0] == "a"
    node, decision = results["batch"]
    assert node is None and decision.reason == "no-budget" and decision.retry_after_s


def test_a_first_come_ingress_queue_serves_the_batch_request_held_longer():
    first, results = _held_admissions("fifo")
    assert first == "batch" and results["batch"][0] == "a" and results["interactive"][0] is None


def test_a_caller_gone_while_held_leaves_the_queue_and_a_request_without_wait_is_refused_at_once():
    from balancer.serve.admission import HeldAdmissions

    async def go():
        clock = _Clock()
        lb = _empty_node(clock)
        at_once = HeldAdmissions(lb, wait_s=0.0, clock=clock)
        node, decision = await at_once.admit("now", 800, clock.t, 1.0)
        assert node is None and decision.rejected and not at_once.queue
        held = HeldAdmissions(lb, wait_s=5.0, clock=clock)
        task = asyncio.create_task(held.admit("gone", 800, clock.t, 1.0))
        await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not held.queue  # dropped at the next round; no placement was made for it
        lb.apply_views({"a": _view(1000, 2.0)})
        assert lb.placement("gone") is None

    asyncio.run(go())


def test_a_held_request_whose_retry_fails_gets_the_error_and_the_others_keep_waiting():
    from balancer.serve.admission import HeldAdmissions

    async def go():
        clock = _Clock()
        lb = _empty_node(clock)
        held = HeldAdmissions(lb, wait_s=5.0, clock=clock)
        bad = asyncio.create_task(held.admit("bad", 800, clock.t, 1.0))
        good = asyncio.create_task(held.admit("good", 800, clock.t, 1.0))
        await asyncio.sleep(0.02)
        held.queue.items()[0].placement["held_fraction"] = 2.0  # admit() raises ValueError on its next try
        await asyncio.sleep(0.05)
        assert bad.done() and isinstance(bad.exception(), ValueError)
        lb.apply_views({"a": _view(1000, 2.0)})
        await asyncio.sleep(0.05)
        assert good.result()[0] == "a"

    asyncio.run(go())


def test_the_status_table_by_class_tells_two_engines_on_one_node_apart():
    from cluster.cli.serve import _class_rows

    nodes = {k: {"node": "10.0.0.1", "pab_tokens": 900, "tier_pab_tokens": {"batch": 5000}, "pab_held_tokens": 90,
                 "by_class": {"interactive": {"finished": 3, "attained": 3, "attainment": 1.0}}}
             for k in ("replica-b", "replica-a")}
    rows = _class_rows(nodes)
    assert [(r[0], r[1], r[2]) for r in rows] == [("10.0.0.1", "replica-a", "batch"), ("10.0.0.1", "replica-a", "interactive"),
                                                  ("10.0.0.1", "replica-b", "batch"), ("10.0.0.1", "replica-b", "interactive")]
    assert rows[0][3:5] == (5000, 90) and rows[1][3:] == (900, None, 3, 3, 1.0)


def test_a_balancer_reports_how_old_the_views_were_at_its_decisions():
    """``stats()["view_age_s"]``: the nodes' report ages (engines' wall clock) over the last decisions."""
    from balancer.serve.admission import BalancerSettings, LocalBalancer

    wall = _Clock()
    lb = LocalBalancer(BalancerSettings("pab"), clock=_Clock(), wall_clock=wall)
    assert lb.stats()["view_age_s"] is None
    lb.apply_views({"a": _view(5000, wall.t - 0.2), "b": _view(5000, wall.t - 0.4)})
    lb.admit("r1", 100)
    wall.t += 0.3
    lb.admit("r2", 100)
    lb.admit("r2", 100, record=False)  # asked again: not a new decision
    ages = lb.stats()["view_age_s"]
    assert ages["decisions"] == 2
    assert ages["mean"] == pytest.approx((0.3 + 0.6) / 2)
    assert ages["p50"] == pytest.approx(0.45)


@pytest.mark.parametrize("route,body", [
    ("/v1/completions", {"model": "m", "prompt": "w1", "structured_outputs": "x"}),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "w1"}], "structured_outputs": 7}),
])
def test_a_field_that_trips_a_vllm_validator_is_a_400_not_a_500(route, body):
    """vLLM's own before-validators call ``.get`` on ``structured_outputs`` whatever its type; the
    AttributeError must reach the client as a 400 in the OpenAI error object (was a 500, found by the fuzz test)."""
    from fastapi.testclient import TestClient
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    from cluster.http.api import make_fastapi_app, request_body

    app = make_fastapi_app(early_refusal=False)
    app.state.args = types.SimpleNamespace(log_error_stack=False)  # what vLLM's handlers read (the ingress sets it)

    for path, model in (("/v1/completions", CompletionRequest), ("/v1/chat/completions", ChatCompletionRequest)):
        async def answer(request):
            return {"ok": True}

        answer.__annotations__["request"] = request_body(model)  # this module's annotations are strings
        app.post(path)(answer)

    client = TestClient(app, raise_server_exceptions=False)
    r = client.post(route, json=body)
    assert r.status_code == 400, r.text
    assert "wrong type" in r.json()["error"]["message"]
    ok = {k: v for k, v in body.items() if k != "structured_outputs"}
    assert client.post(route, json=ok).status_code == 200
    assert "CompletionRequest" in app.openapi()["components"]["schemas"]


def test_the_status_title_gives_the_routers_view_age_at_their_decisions():
    from cluster.cli.serve import _view_age

    assert _view_age({}) == "view age -" and _view_age({"r1": {"view_age_s": None}}) == "view age -"
    routers = {"r1": {"view_age_s": {"p50": 0.12, "p90": 0.18, "mean": 0.13, "decisions": 100}},
               "r2": {"view_age_s": {"p50": 0.15, "p90": 0.25, "mean": 0.16, "decisions": 50}}}
    assert _view_age(routers) == "view age P50 0.15 s, P90 0.25 s (over 150 recent decisions)"
