"""The simulator reproduces hand-computed timelines on tiny cases (linear truth, no noise)."""

from __future__ import annotations

import random

import pytest

from cluster.sim.config import SimConfig
from cluster.sim.metrics import attains, tpot_s, summarize
from cluster.sim.node import SimRequest
from cluster.sim.simulator import simulate
from cluster.sim.true_step_time import TrueStepTime
from cluster.workload.traces import TraceRequest, Workload
from node.fit.profile import Profile
from node.core.request import SLO


def linear_profile(a=0.01, b=0.001, c=0.0, **kw) -> Profile:
    return Profile(a_s=a, b_s_per_token=b, c_s_per_context_token=c, safety_factor=1.0, mape=0.0,
                   p99_abs_error_s=0.0, hardware="test", model="test", method="test", name="tiny",
                   kv_cache_tokens=kw.pop("kv_cache_tokens", 100_000), max_num_seqs=256,
                   max_num_batched_tokens=8192, block_size=16, extra={"ground_truth": None, **kw})


def workload(*rows) -> Workload:
    return Workload([TraceRequest(i, *row) for i, row in enumerate(rows)], name="tiny")


def run(rows, profile=None, **cfg):
    cfg.setdefault("balancer", "round-robin")
    config = SimConfig(trace="tiny", profile="tiny", **cfg)
    return simulate(config, workload=workload(*rows), profile=profile or linear_profile())


def test_one_request_prefills_in_one_step_then_decodes_one_token_per_step():
    # FairBatching: no decodes, budget = max(1 s slack, 50 ms) -> the whole 100-token prompt fits.
    res = run([(0.0, 100, 3)], scheduler="fairbatching")
    (req,) = res.requests
    assert req.first_token_s == pytest.approx(0.01 + 0.100)  # a + b * 100
    assert req.last_token_s == pytest.approx(0.110 + 2 * 0.011)  # two decode steps of a + b
    assert tpot_s(req) == pytest.approx(0.011)
    assert res.report["attainment"] == 1.0 and res.report["steps"] == 3


def test_a_token_budget_chunks_the_prompt():
    res = run([(0.0, 100, 2)], scheduler="vllm", token_budget=64)
    (req,) = res.requests
    assert req.first_token_s == pytest.approx((0.01 + 0.064) + (0.01 + 0.036))
    assert req.last_token_s == pytest.approx(req.first_token_s + 0.011)


def test_a_request_arriving_mid_step_waits_for_the_next_step_and_context_costs_time():
    # A: prefill 100 in [0, 0.12) (a + 100 b + 100 c). B arrives at 0.05 and joins step 2
    # with A's decode: 51 new tokens, context 101 + 50.
    res = run([(0.0, 100, 2), (0.05, 50, 1)], profile=linear_profile(c=1e-4), scheduler="vllm")
    a, b = res.requests
    assert a.first_token_s == pytest.approx(0.12)
    step2_end = 0.12 + 0.01 + 0.051 + 1e-4 * 151
    assert b.first_token_s == pytest.approx(step2_end)
    assert a.last_token_s == pytest.approx(step2_end)
    assert b.finished and a.finished
    assert res.report["ttft_p50"] == pytest.approx(((0.12) + (step2_end - 0.05)) / 2)


def test_an_idle_node_starts_a_step_when_a_request_arrives():
    res = run([(0.0, 10, 1), (5.0, 10, 1)], scheduler="sarathi")
    assert res.requests[1].first_token_s == pytest.approx(5.0 + 0.01 + 0.010)


def test_a_full_kv_cache_preempts_the_request_started_last_which_recomputes_and_finishes():
    # 4 blocks of 16 tokens: two requests that each grow to 56 tokens cannot both stay. vLLM (FCFS)
    # preempts the tail of its running list: the request that started last.
    profile = linear_profile(kv_cache_tokens=64)
    res = run([(0.0, 16, 40), (0.0, 16, 40)], profile=profile, scheduler="vllm")
    assert res.report["preemptions"] >= 1
    assert all(r.finished and r.emitted == 40 for r in res.requests)
    assert res.requests[1].preemptions >= 1 and res.requests[0].preemptions == 0


TWO_TIERS = ("interactive=0.5:1:0.05", "batch=0.5:30:0.25")


def batch_then_interactive_seed() -> int:
    """A seed whose tier draw makes request 0 a batch request and request 1 an interactive one."""
    from cluster.workload.tiers import assign_tiers, parse_slo_tiers

    tiers = parse_slo_tiers(TWO_TIERS)
    return next(seed for seed in range(100)
                if [t.name for t in assign_tiers(2, tiers, seed)] == ["batch", "interactive"])


@pytest.mark.parametrize("scheduler", ["vllm-priority", "fairbatching"])
def test_the_kv_victim_is_the_one_vllm_takes_under_the_policy_not_the_newest_arrival(scheduler):
    """A batch request starts first, an interactive one 50 ms later (after the batch prompt's step);
    4 KV blocks of 16 tokens cannot hold both as they grow. vLLM's priority policy preempts the largest
    (priority, arrival): the batch request, though it is the older one. FairBatching's host puts the
    decodes it leaves out (ahead of their envelope) at the tail of the running list, the latest next-token
    deadline last: the batch decode (TPOT 250 ms) again. Preempting the newest arrival would take the
    interactive one. (The interactive request, 36 tokens at most, then finishes before the batch one has
    room to come back.)"""
    profile = linear_profile(kv_cache_tokens=64)
    res = run([(0.0, 16, 40), (0.05, 16, 20)], profile=profile, scheduler=scheduler, slo_tier=TWO_TIERS,
              seed=batch_then_interactive_seed())
    batch, interactive = res.requests
    assert (batch.slo.tier, interactive.slo.tier) == ("batch", "interactive")
    assert batch.first_token_s < interactive.arrival_s  # the batch request started first
    assert res.report["preemptions"] >= 1
    assert batch.preemptions >= 1 and interactive.preemptions == 0
    assert all(r.finished and r.emitted == r.output_tokens for r in res.requests)


def test_fairbatchings_preemption_order_matches_its_vllm_host():
    """The order the simulator preempts by under FairBatching is the one the vLLM host gives its running
    list (tests/test_scheduler_host.py::test_an_urgent_decode_short_of_kv_preempts_the_most_relaxed_hidden_decode,
    same requests): the planned decode, the urgent decode short of KV, then the ones the plan leaves out,
    the latest next-token deadline last (the first victim). vLLM's FCFS keeps the order they started in."""
    from node.core.plan import Limits
    from node.core.policies import make_policy
    from node.core.request import RequestState
    from tests.conftest import REF_MODEL

    now = 50.0

    def decode(rid: str, tpot_s: float, arrival_s: float, prompt: int = 32) -> RequestState:
        return RequestState(rid, arrival_s, prompt, SLO(1.0, tpot_s), computed_tokens=prompt, output_tokens=1,
                            first_token_s=arrival_s + 0.1)

    # Started in this order; the urgent decode fell 10 s behind its envelope.
    running = [decode("relaxed-1000", 1000.0, 49.8), decode("urgent", 0.01, 39.8),
               decode("relaxed-100", 100.0, 49.8), decode("roomy", 0.05, 49.8, prompt=20)]
    limits = Limits(max_num_seqs=256, max_num_batched_tokens=8192, kv_blocks_free=0, block_size=16,
                    kv_blocks_total=8)
    policy = make_policy("fairbatching", REF_MODEL)
    plan = policy.plan(running, limits, now)
    assert [i.request_id for i in plan.items] == ["roomy"] and plan.short_of_kv == ["urgent"]
    order = [st.request_id for st in policy.preemption_order(running, plan, now)]
    assert order == ["roomy", "urgent", "relaxed-100", "relaxed-1000"]
    vllm = make_policy("vllm", REF_MODEL)
    assert [st.request_id for st in vllm.preemption_order(running, plan, now)] == [st.request_id for st in running]


def test_ground_truth_step_time_follows_the_derivation_formula():
    truth = {"linear_ops_ms": [[1, 5.0], [101, 15.0]], "fixed_overhead_s": 0.001,
             "attn_decode_s_per_context_token": 1e-6, "attn_prefill_s_per_token_sq": 1e-8}
    step = TrueStepTime(linear_profile(ground_truth=truth))
    assert step.uses_ground_truth
    assert step.linear_ops_s(51) == pytest.approx(0.010)
    assert step.linear_ops_s(201) == pytest.approx(0.025)  # linear extrapolation
    t = step.step_s(51, decode_context_tokens=1000, prefill_context_tokens=0, prefill_attention_pairs=50 * 25)
    assert t == pytest.approx(0.001 + 0.010 + 1e-3 + 1e-8 * 1250)


def test_noise_is_multiplicative_with_mean_one():
    step = TrueStepTime(linear_profile(), noise_sigma=0.2, rng=random.Random(5))
    samples = [step.step_s(100, 0, 100, 0.0) for _ in range(4000)]
    assert sum(samples) / len(samples) == pytest.approx(0.11, rel=0.02)
    assert min(samples) < 0.1 < 0.12 < max(samples)


def test_correlated_noise_keeps_mean_one_and_carries_its_lag_one_correlation():
    """The AR(1) step noise (``noise_ar``): the multiplier still has mean 1 and log standard deviation sigma,
    and one step's log noise correlates with the next's by ``noise_ar``; at 0 the draws are the independent
    noise's exactly (recorded simulations stay as they were)."""
    import math

    import numpy as np

    def log_noise(ar: float, n: int = 20000, sigma: float = 0.4) -> np.ndarray:
        step = TrueStepTime(linear_profile(), noise_sigma=sigma, noise_ar=ar, rng=random.Random(7))
        forward = [(step.step_s(100, 0, 100, 0.0), step.last_forward_s)[1] for _ in range(n)]
        return np.log(np.asarray(forward) / 0.11)

    def lag1(x: np.ndarray) -> float:
        d = x - x.mean()
        return float(np.dot(d[:-1], d[1:]) / np.dot(d, d))

    correlated, independent = log_noise(0.6), log_noise(0.0)
    for x in (correlated, independent):
        assert np.exp(x).mean() == pytest.approx(1.0, abs=0.03)
        assert x.std() == pytest.approx(0.4, abs=0.02)
    assert lag1(correlated) == pytest.approx(0.6, abs=0.03)
    assert abs(lag1(independent)) < 0.03
    rng = random.Random(7)
    assert independent[:50] == pytest.approx([math.log(math.exp(rng.gauss(-0.08, 0.4))) for _ in range(50)], abs=1e-12)
    for bad in (1.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="noise_ar"):
            TrueStepTime(linear_profile(), noise_sigma=0.1, noise_ar=bad)
    with pytest.raises(ValueError, match="noise_ar"):
        SimConfig(noise=0.1, noise_ar=1.2)


def test_a_steps_host_time_grows_with_the_requests_it_serves():
    """``host_s_per_request``: a step's host time is its fixed part plus this much per request it serves, on
    top of the forward pass and under the shared host's slowdown; 0 (the default) leaves steps as they were.
    In the simulator it is the truth only: the nodes plan with ``host_s`` (their refit measures the rest),
    and a node serving eight decodes a step steps more slowly than with a fixed host time."""
    base = TrueStepTime(linear_profile(), host_s=0.002)
    per_request = TrueStepTime(linear_profile(), host_s=0.002, host_s_per_request=0.0005)
    assert base.step_s(100, 0, 100, 0.0, 1.0, 8) == pytest.approx(0.01 + 0.1 + 0.002)
    assert per_request.step_s(100, 0, 100, 0.0, 2.0, 8) == pytest.approx(2 * (0.112 + 8 * 0.0005))
    assert per_request.last_forward_s == pytest.approx(2 * 0.11)
    for bad in (-1e-4, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="host_s_per_request"):
            TrueStepTime(linear_profile(), host_s_per_request=bad)
        with pytest.raises(ValueError, match="host_s_per_request"):
            SimConfig(host_s_per_request=bad)
    with pytest.raises(ValueError, match="host_fixed_s"):
        SimConfig(host_fixed_s=-0.001)
    # vLLM's token budget plans the same steps whatever the host time: one prefill of all eight, then 39
    # steps of eight decodes, each 8 ms longer with 1 ms a request
    rows = [(0.0, 10, 40)] * 8

    def last_token_s(**cfg) -> float:
        return max(r.last_token_s for r in run(rows, scheduler="vllm", **cfg).requests)

    fixed = last_token_s(host_s=0.002)
    assert last_token_s(host_s=0.002, host_s_per_request=0.001) == pytest.approx(fixed + 40 * 8 * 0.001)
    # host_fixed_s is the truth's fixed part; host_s (here ten times it) is only what the nodes plan with
    assert last_token_s(host_s=0.02, host_fixed_s=0.002, host_s_per_request=0.001) == pytest.approx(fixed + 0.32)


def test_a_request_attains_only_with_both_its_ttft_and_mean_tpot_within_slo():
    def req(first, last, n):
        r = SimRequest(0, 0.0, 10, n, SLO(1.0, 0.05))
        r.first_token_s, r.last_token_s, r.emitted, r.finish_s = first, last, n, last
        return r

    assert attains(req(0.9, 0.9 + 9 * 0.05, 10))
    assert not attains(req(1.1, 1.2, 3))  # late first token
    assert not attains(req(0.2, 0.2 + 9 * 0.06, 10))  # mean TPOT 60 ms
    assert attains(req(0.5, 0.5, 1))  # one token: TTFT only
    rejected = SimRequest(1, 0.0, 10, 5, SLO(1.0, 0.05))
    rejected.rejected = True
    report = summarize([req(0.9, 1.35, 10), rejected], offered_span_s=1.0)
    assert report["attainment"] == 0.5 and report["admitted_attainment"] == 1.0 and report["rejected"] == 1
    assert report["token_attainment_arrival"] == 0.0  # on-time counters were never set by hand


def test_per_token_attainment_differs_by_anchor_when_the_first_token_is_early():
    # One request, first token at 0.11 s, then decode steps of 11 ms with TPOT SLO 10 ms:
    # arrival anchor: deadline 1 + 0.01 j, always met; first-token anchor: 0.11 + 0.01 j, missed.
    res = run([(0.0, 100, 5)], scheduler="vllm", tpot_slo_s=0.01)
    rep = res.report
    assert rep["token_attainment_arrival"] == 1.0
    assert rep["token_attainment_first_token"] == pytest.approx(1 / 5)
    assert rep["attainment"] == 0.0  # mean TPOT 11 ms > 10 ms
