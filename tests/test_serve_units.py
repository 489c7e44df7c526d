"""The serving layer's logic without a cluster: registry reservations, the router's hook, config, live reports."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from balancer.pab_registry import PABRegistry
from cluster.loadgen import LiveRecord, live_report
from node.request import SLO

pytestmark = [pytest.mark.serve, pytest.mark.timeout(60)]


def _report(reg: PABRegistry, key: str, pab: float, **kw) -> None:
    reg.report(key, {"pab_tokens": pab, "prefill_rate_tps": 1000.0, "reported_at_s": kw.pop("at", 1.0), **kw})


def test_registry_places_on_the_largest_budget_and_debits_at_once():
    reg = PABRegistry("pab")
    _report(reg, "a", 1000)
    _report(reg, "b", 3000)
    assert reg.reserve("r1", 1500)["node"] == "b"  # b: 3000 -> 1500
    assert reg.reserve("r2", 1200)["node"] == "b"  # b 1500 still beats a 1000
    assert reg.reserve("r3", 400)["node"] == "a"  # b 300 < a 1000
    snap = reg.snapshot()["nodes"]
    assert snap["b"]["pab_tokens_debited"] == 300 and snap["b"]["in_flight"] == 2


def test_registry_rejects_with_retry_after_when_no_node_has_budget_and_recovers_on_report():
    reg = PABRegistry("pab")
    _report(reg, "a", 500)
    d = reg.reserve("r1", 800)
    assert d["node"] is None and d["reason"] == "no-budget" and d["retry_after_s"] > 0
    _report(reg, "a", 900, at=2.0)  # budget returned
    assert reg.reserve("r2", 800)["node"] == "a"


def test_release_returns_the_in_flight_slot_and_unknown_tokens_are_ignored():
    reg = PABRegistry("power-of-two")
    _report(reg, "a", 0)
    assert reg.reserve("r1", 10)["node"] == "a"
    reg.release("r1")
    reg.release("r1")
    reg.release("never")
    assert reg.snapshot()["nodes"]["a"]["in_flight"] == 0


def test_registry_only_considers_the_routers_candidates_and_live_nodes():
    reg = PABRegistry("pab")
    _report(reg, "a", 5000)
    _report(reg, "b", 100)
    assert reg.reserve("r1", 50, ["b"])["node"] == "b"  # a is not a candidate (e.g. dead)
    assert reg.reserve("r2", 50, ["c"])["reason"] == "no-engine"


def _model(b: float, refits: int) -> dict:
    return {"a_s": 0.01, "b_s_per_token": b, "c_s_per_context_token": 1e-7, "safety_factor": 1.0, "refits": refits}


def test_registry_pools_the_nodes_recent_refits_into_one_deployment_model(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("balancer.pab_registry.time.monotonic", lambda: clock[0])
    reg = PABRegistry("pab", model_max_age_s=30.0)
    # Before any node refits, there is no deployment model (nodes use their own profile).
    assert reg.report("a", {"pab_tokens": 1.0}, {"own_model": _model(1e-5, 0)}) is None
    assert reg.report("a", {"pab_tokens": 1.0}, {"own_model": _model(2e-4, 1)})["b_s_per_token"] == 2e-4
    reg.report("b", {"pab_tokens": 1.0}, {"own_model": _model(4e-5, 3)})
    reg.report("c", {"pab_tokens": 1.0}, {"own_model": _model(6e-5, 2)})
    shared = reg.report("b", {"pab_tokens": 1.0}, {"own_model": _model(4e-5, 3)})
    assert shared["b_s_per_token"] == pytest.approx(6e-5) and shared["nodes"] == 3  # the median
    assert reg.snapshot()["deployment_model"] == shared
    # a stops refitting (no traffic): 31 s later only the nodes that still refit count. Reporting
    # the same refit again does not make it new.
    clock[0] += 31.0
    reg.report("a", {"pab_tokens": 1.0}, {"own_model": _model(2e-4, 1)})
    reg.report("b", {"pab_tokens": 1.0}, {"own_model": _model(5e-5, 4)})
    reg.report("c", {"pab_tokens": 1.0}, {"own_model": _model(7e-5, 3)})
    assert reg.deployment_model()["b_s_per_token"] == pytest.approx(6e-5)  # median of 5e-5 and 7e-5
    # A node that stops reporting leaves the pool with its report.
    clock[0] += reg.stale_after_s - 1
    reg.report("b", {"pab_tokens": 1.0}, {"own_model": _model(5e-5, 5)})
    clock[0] += 2
    assert reg.deployment_model()["b_s_per_token"] == pytest.approx(5e-5)
    # Malformed models are ignored, never fatal.
    assert reg.report("d", {"pab_tokens": 1.0}, {"own_model": {"refits": 9}}) is not None


class _FakeReplica:
    def __init__(self, key: str, stats: dict):
        self.replica_id = SimpleNamespace(unique_id=key)
        self.routing_stats = stats


def _pending(prompt_tokens: int, rid: str = "req-1"):
    from ray.serve.request_router import PendingRequest

    meta = SimpleNamespace(call_method="generate", internal_request_id=rid, multiplexed_model_id="")
    return PendingRequest(args=[{"prompt_tokens": prompt_tokens}], kwargs={}, metadata=meta)


def _router(**state):
    from balancer.router import PABRequestRouter

    router = PABRequestRouter.__new__(PABRequestRouter)  # the hook alone, without Serve's plumbing
    router.initialize_state(**state)
    return router


def test_router_falls_back_to_routing_stats_without_a_registry_and_fails_the_request_with_429():
    from ray.serve.exceptions import BackPressureError

    async def go():
        router = _router(balancer="pab")
        a = _FakeReplica("a", {"pab_tokens": 200.0, "prefill_rate_tps": 100.0, "reported_at_s": 1.0})
        b = _FakeReplica("b", {"pab_tokens": 900.0, "prefill_rate_tps": 100.0, "reported_at_s": 1.0})
        chosen = await router.choose_replicas([a, b], _pending(300))
        assert chosen == [[b]] and router.fallback_decisions == 1
        router.on_request_completed(b.replica_id, "req-1")
        pr = _pending(5000, "req-2")
        chosen = await router.choose_replicas([a, b], pr)
        assert pr.future.done() and len(chosen) == 1  # Serve sees the request done; nothing is sent
        exc = pr.future.exception()
        assert isinstance(exc, BackPressureError) and exc.status_code == 429 and exc.retry_after_s > 0

    asyncio.run(go())


def test_router_waits_with_backoff_before_rejecting_when_asked_to():
    async def go():
        router = _router(balancer="pab", admission_wait_s=30.0)
        a = _FakeReplica("a", {"pab_tokens": 10.0, "reported_at_s": 1.0})
        pr = _pending(5000)
        assert await router.choose_replicas([a], pr) == []
        assert pr.routing_context.should_backoff and not pr.future.done()

    asyncio.run(go())


def test_config_file_errors_name_the_key_and_the_file(tmp_path):
    from cluster.app import ConfigError, load_config

    good = tmp_path / "c.yaml"
    good.write_text("engines: 3\nrouter: serve-default\nport: 8111\n")
    cfg = load_config(good)
    assert (cfg.engines, cfg.router, cfg.url) == (3, "serve-default", "http://127.0.0.1:8111")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"engines": 2, "balancr": "pab"}))
    with pytest.raises(ConfigError, match=r"bad\.json.*balancr"):
        load_config(bad)
    bad.write_text(json.dumps({"ttft_slo_s": -1}))
    with pytest.raises(ConfigError, match="ttft_slo_s"):
        load_config(bad)


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
