"""Issue 10 in the simulator: host time, whole-life PAB inputs, the closed loop, relegation, the old PAB.

Tiny hand-checkable cases on a linear truth (``tests.test_sim_timeline``).
"""

from __future__ import annotations

import math

import pytest

from cluster.sim.config import SimConfig
from node.core.pab_prefill_only import estimate_pab_prefill_only
from cluster.sim.metrics import attains
from cluster.sim.true_step_time import TrueStepTime
from node.core.step_time import StepTimeModel
from node.core.pab import estimate_pab
from node.core.request import SLO, RequestState

from tests.test_sim_timeline import linear_profile, run


def test_host_time_lengthens_every_simulated_step_and_the_nodes_plan_with_it():
    # a + b * 100 = 0.11 s of forward pass, then 5 ms of host time; each decode step a + b + host.
    res = run([(0.0, 100, 3)], scheduler="fairbatching", host_s=0.005)
    (req,) = res.requests
    assert req.first_token_s == pytest.approx(0.110 + 0.005)
    assert req.last_token_s == pytest.approx(0.115 + 2 * (0.011 + 0.005))
    assert res.report["host_s"] == 0.005 and res.report["planning_models"][0]["host_s"] == 0.005
    plain = run([(0.0, 100, 3)], scheduler="fairbatching")
    assert plain.requests[0].first_token_s == pytest.approx(0.110) and plain.report["host_s"] == 0.0
    blind = run([(0.0, 100, 3)], scheduler="fairbatching", host_s=0.005, host_in_model=False)
    assert blind.requests[0].first_token_s == pytest.approx(0.115)  # the truth has it ...
    assert blind.report["planning_models"][0]["host_s"] == 0.0  # ... the planner does not


def test_true_step_time_takes_the_profile_host_time_unless_overridden():
    profile = linear_profile()
    profile.host_s = 0.002
    assert TrueStepTime(profile).step_s(10, 0, 10, 0.0) == pytest.approx(0.01 + 0.01 + 0.002)
    assert TrueStepTime(profile, host_s=0.0).step_s(10, 0, 10, 0.0) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="host_s"):
        SimConfig(host_s=-1.0)


def test_nodes_budget_with_the_engine_caps_their_expected_output_and_their_correction(pab_calls):
    seen = pab_calls
    rows = [(0.1 * i, 50, 4 + 4 * (i % 2)) for i in range(20)]  # outputs 4 and 8: mean 6
    res = run(rows, balancer="pab", nodes=1, feedback=True, expected_output_tokens=100.0)
    assert {kw["max_num_batched_tokens"] for kw in seen} == {8192} and {kw["max_num_seqs"] for kw in seen} == {256}
    expected = [kw["expected_output_tokens"] for kw in seen]
    assert expected[0] == 100.0  # the prior, before anything finished
    assert expected[-1] == pytest.approx(6.0) == res.report["node_expected_output_tokens"][0]
    assert all("correction" in kw and "front_delay_s" in kw for kw in seen)
    oracle = run(rows, balancer="pab", nodes=1, oracle_output_lengths=True)
    assert oracle.report["node_expected_output_tokens"] == [None]  # each request carries its true length


def test_a_node_budgets_with_the_token_budget_its_scheduler_runs_at(pab_calls):
    """A vLLM node at a 512-token budget prefills at most 512 tokens a step: its PAB must plan with that
    cap, not the engine's 8192 (a live host reports the budget as max_num_batched_tokens)."""
    rows = [(0.1 * i, 50, 4) for i in range(10)]
    run(rows, balancer="pab", nodes=1, scheduler="vllm", token_budget=512)
    assert {kw["max_num_batched_tokens"] for kw in pab_calls} == {512}
    assert not any(kw["paced_decodes"] or kw["lent_decode_slack"] for kw in pab_calls)
    pab_calls.clear()
    run(rows, balancer="pab", nodes=1, scheduler="fairbatching", pab_lent_slack=True)
    assert {kw["max_num_batched_tokens"] for kw in pab_calls} == {8192}
    assert all(kw["paced_decodes"] and kw["lent_decode_slack"] for kw in pab_calls)


def test_kv_pressure_stops_a_node_lending_decode_slack_and_nodes_report_their_kv_limit(pab_calls, monkeypatch):
    """With KV pressure a node that holds that share of its KV serves every decode, so its PAB lends no
    decode slack; every view it publishes carries its budget's KV limit (the held share of KV needs it)."""
    from balancer.core.pab_placement import PABPlacement

    views = []
    update = PABPlacement.update
    monkeypatch.setattr(PABPlacement, "update", lambda self, view: (views.append(view), update(self, view))[1])
    rows = [(0.05 * i, 400, 30) for i in range(20)]
    profile = linear_profile(kv_cache_tokens=20_000)
    run(rows, profile=profile, balancer="pab", nodes=1, scheduler="fairbatching", pab_lent_slack=True)
    assert all(kw["lent_decode_slack"] for kw in pab_calls)
    assert views and all(v.kv_pab_tokens is not None and v.kv_pab_tokens <= v.kv_capacity_tokens == 20_000
                         for v in views)
    assert min(v.kv_pab_tokens for v in views) < 20_000 - 400  # it falls as prompts take KV
    pab_calls.clear()
    run(rows, profile=profile, balancer="pab", nodes=1, scheduler="fairbatching", pab_lent_slack=True,
        kv_pressure=0.05)
    lent = [kw["lent_decode_slack"] for kw in pab_calls]
    assert lent[0] and not all(lent)  # lent while the KV is empty, not once 5 % of it is held


def test_max_num_seqs_overrides_the_profiles_seats(pab_calls):
    rows = [(0.0, 50, 40) for _ in range(6)]  # six requests at once, long outputs
    capped = run(rows, nodes=1, max_num_seqs=2, scheduler="vllm")
    # two seats: the third request starts only when one of the first two has finished
    first_done = min(r.finish_s for r in capped.requests)
    assert sorted(r.first_token_s for r in capped.requests)[2] > first_done
    free = run(rows, nodes=1, scheduler="vllm")
    assert max(r.first_token_s for r in free.requests) < min(r.finish_s for r in free.requests)
    pab_calls.clear()
    run(rows, nodes=1, balancer="pab", max_num_seqs=3)
    assert {kw["max_num_seqs"] for kw in pab_calls} == {3}
    with pytest.raises(ValueError, match="max_num_seqs must be >= 1"):
        SimConfig(max_num_seqs=0)


def test_a_node_with_feedback_shrinks_its_correction_when_ttfts_exceed_the_slo():
    # 200-token prompts take 0.21 s to prefill against a 0.1 s TTFT SLO: every TTFT is twice the SLO.
    rows = [(0.2 * i, 200, 2) for i in range(40)]
    on = run(rows, balancer="pab", nodes=1, feedback=True, ttft_slo_s=0.1, pab_reject=False)
    corr = on.report["node_correction"][0]
    assert corr["decreases"] >= 1 and corr["min"] < 0.75
    assert min(row[5] for row in on.timelines[0]) == corr["min"]  # the timeline carries it
    off = run(rows, balancer="pab", nodes=1, ttft_slo_s=0.1, pab_reject=False)
    assert off.report["node_correction"][0] == {"final": 1.0, "min": 1.0, "mean": 1.0, "decreases": 0}


def test_a_feedback_ceiling_above_one_lets_the_loop_raise_the_budget_past_the_model():
    # Light load well within the SLO: the loop's evidence says the model is conservative. With its
    # default ceiling (1) the factor stays at 1; with a higher one it grows past the model.
    rows = [(0.2 * i, 50, 2) for i in range(150)]
    default = run(rows, balancer="pab", nodes=1, feedback=True).report["node_correction"][0]
    raised = run(rows, balancer="pab", nodes=1, feedback=True, feedback_max_factor=1.5).report["node_correction"][0]
    assert default["final"] == 1.0
    assert 1.0 < raised["final"] <= 1.5
    with pytest.raises(ValueError, match="feedback_max_factor"):
        SimConfig(feedback_max_factor=0.0)


def test_relegation_lets_the_requests_that_can_still_attain_attain_where_edf_spreads_lateness():
    # One node, no admission: a burst of 30 prompts at t=0 (about 3 s of work against a 1 s TTFT),
    # then a steady stream at about 80 % of the node's capacity.
    rows = [(0.0, 100, 1)] * 30 + [(0.5 + 0.14 * i, 100, 1) for i in range(100)]
    results = {rel: run(rows, scheduler="fairbatching", relegate=rel, ttft_slo_s=1.0, tpot_slo_s=0.05)
               for rel in ("none", "lost")}
    stream = {rel: [r for r in res.requests if r.arrival_s > 0] for rel, res in results.items()}
    # EDF serves the burst's overdue prompts first and every later prompt misses in turn (the domino).
    assert sum(map(attains, stream["none"])) / 100 < 0.1
    # Relegated, the burst's lost prompts wait; the stream attains; nothing is dropped.
    assert sum(map(attains, stream["lost"])) / 100 == 1.0
    assert results["lost"].report["attainment"] > 0.8 > 0.1 > results["none"].report["attainment"]
    assert results["lost"].report["finished"] == results["none"].report["finished"] == 130


def test_the_prefill_only_pab_ignores_what_the_whole_life_pab_reserves():
    model = StepTimeModel(0.006, 2.2e-5, 5e-8)
    slo = SLO(3.0, 0.05)
    # Twenty 12k-token requests decoding, of an expected 200 output tokens: the decodes fill most steps.
    reqs = [RequestState(f"d{i}", 0.0, 12_000, slo, computed_tokens=12_000, output_tokens=10, first_token_s=1.0)
            for i in range(20)]
    kw = dict(horizon_s=3.0, kv_free_tokens=400_000, default_tpot_s=0.05)
    old = estimate_pab_prefill_only(reqs, model, 2.0, **kw)
    new = estimate_pab(reqs, model, 2.0, expected_output_tokens=200.0, max_num_batched_tokens=8192,
                       max_num_seqs=256, **kw)
    assert new.pab_tokens < old.pab_tokens
    res = run([(0.1 * i, 50, 5) for i in range(20)], balancer="pab", nodes=2, pab_variant="prefill-only")
    assert res.report["finished"] == 20 and res.report["pab_variant"] == "prefill-only"
    with pytest.raises(ValueError, match="pab_variant"):
        SimConfig(pab_variant="whole")
    with pytest.raises(ValueError, match="relegate"):
        SimConfig(relegate="all")


def test_the_prefill_only_pab_checks_its_inputs_as_the_whole_life_one_does():
    model = StepTimeModel(0.006, 2.2e-5, 5e-8)
    kw = dict(kv_free_tokens=10, default_tpot_s=0.05)
    with pytest.raises(ValueError, match="horizon_s"):
        estimate_pab_prefill_only([], model, 0.0, horizon_s=0.0, **kw)
    with pytest.raises(ValueError, match="now_s"):
        estimate_pab_prefill_only([], model, math.nan, horizon_s=1.0, **kw)
    with pytest.raises(TypeError):
        estimate_pab_prefill_only([], model, 0.0, horizon=1.0, **kw)  # a misspelt knob is an error
