"""SLO tiers in the simulator (issue 13): --slo-tier, per-tier reports, vLLM's priority policy."""

import pytest

from cluster.sim.config import SimConfig
from cluster.sim.capacity import report_metric
from cluster.workload.tiers import assign_tiers, parse_slo_tier, parse_slo_tiers
from node.core.plan import Limits
from node.core.policies import make_policy
from node.core.request import SLO, RequestState
from node.core.step_time import StepTimeModel
from tests.test_sim_timeline import linear_profile, workload


def test_tiers_parse_rank_tightest_first_and_refuse_malformed_specs():
    batch, interactive = parse_slo_tiers(["batch=0.2:30:0.25", "interactive=0.8:1:0.05"])
    assert (interactive.slo.priority, batch.slo.priority) == (0, 1)
    assert interactive.slo == SLO(1.0, 0.05, tier="interactive", priority=0)
    for bad in ("interactive", "x=0.5:1", "x=0:1:0.05", "x=0.5:-1:0.05", "x=a:1:0.05", "=0.5:1:0.05"):
        with pytest.raises(ValueError, match="SLO tier"):
            parse_slo_tier(bad)
    with pytest.raises(ValueError, match="each name once"):
        parse_slo_tiers(["a=1:1:0.05", "a=1:2:0.05"])
    with pytest.raises(ValueError, match="SLO tier"):
        SimConfig(slo_tier=("x=0.5:1",))


def test_assignment_follows_the_shares_and_the_seed():
    tiers = parse_slo_tiers(["interactive=0.8:1:0.05", "batch=0.2:30:0.25"])
    a = assign_tiers(5000, tiers, seed=3)
    assert a == assign_tiers(5000, tiers, seed=3) and a != assign_tiers(5000, tiers, seed=4)
    assert sum(t.name == "interactive" for t in a) / 5000 == pytest.approx(0.8, abs=0.03)


def test_a_tiered_run_holds_each_request_to_its_tier_and_reports_per_tier():
    from cluster.sim.simulator import simulate

    rows = [(0.01 * i, 200, 20) for i in range(200)]
    # (no shedding: this overload would refuse nearly every batch request after the interactive refusals)
    cfg = SimConfig(slo_tier=("interactive=0.5:0.5:0.02", "batch=0.5:30:0.25"), seed=1, tier_shed_s=0)
    res = simulate(cfg, workload=workload(*rows), profile=linear_profile())
    per = res.report["per_tier"]
    assert list(per) == ["interactive", "batch"]  # tightest first
    assert per["interactive"]["requests"] + per["batch"]["requests"] == 200
    assert {r.slo.tier for r in res.requests} == {"interactive", "batch"}
    # batch's loose SLOs are met far more easily than interactive's on the same node, once admitted
    # (under this overload admission refuses most batch requests first: the share held for interactive)
    assert per["batch"]["admitted_attainment"] >= per["interactive"]["admitted_attainment"]
    assert per["batch"]["rejected"] >= per["interactive"]["rejected"]
    assert report_metric(res.report, "per_tier.batch.attainment") == per["batch"]["attainment"]
    with pytest.raises(KeyError, match="per_tier.bulk"):
        report_metric(res.report, "per_tier.bulk.attainment")


def test_only_tier_replays_one_tiers_requests_at_their_own_arrivals():
    """--only-tier: the same requests the tiered run gives that tier, at the same times, the rest dropped."""
    from cluster.sim.simulator import simulate

    rows = [(0.01 * i, 200, 20) for i in range(200)]
    tiers = ("interactive=0.5:0.5:0.02", "batch=0.5:30:0.25")
    both = simulate(SimConfig(slo_tier=tiers, seed=1), workload=workload(*rows), profile=linear_profile())
    alone = simulate(SimConfig(slo_tier=tiers, seed=1, only_tier="interactive"), workload=workload(*rows),
                     profile=linear_profile())
    mine = [(r.rid, r.arrival_s) for r in both.requests if r.slo.tier == "interactive"]
    assert [(r.rid, r.arrival_s) for r in alone.requests] == mine and 0 < len(mine) < 200
    assert list(alone.report["per_tier"]) == ["interactive"]
    # without the batch requests beside them, the interactive ones do at least as well
    assert alone.report["attainment"] >= both.report["per_tier"]["interactive"]["attainment"]
    with pytest.raises(ValueError, match="'bulk' is not a tier"):
        SimConfig(slo_tier=tiers, only_tier="bulk")
    with pytest.raises(ValueError, match="only_tier needs"):
        SimConfig(only_tier="interactive")


def test_vllm_priority_admits_waiting_prompts_by_priority_then_arrival():
    hi, lo = SLO(1.0, 0.05, tier="interactive", priority=0), SLO(30.0, 0.25, tier="batch", priority=1)
    reqs = [RequestState("early-batch", 0.0, 100, lo), RequestState("late-interactive", 1.0, 100, hi)]
    limits = Limits(max_num_batched_tokens=100)  # room for one prompt
    model = StepTimeModel(0.005, 2e-5, 0.0)
    assert make_policy("vllm", model).plan(reqs, limits, 2.0).prefill_chunks == {"early-batch": 100}
    assert make_policy("vllm-priority", model).plan(reqs, limits, 2.0).prefill_chunks == {"late-interactive": 100}


def test_overloaded_pab_sheds_batch_after_each_interactive_refusal():
    """A single PAB node at several times its capacity: with tier_shed_s no batch request is admitted
    within tier_shed_s after an interactive refusal (batch is shed first); with 0, many are."""
    import bisect

    from cluster.sim.simulator import simulate

    rows = [(0.004 * i, 400 if i % 3 else 120, 20) for i in range(1500)]

    def batch_admitted_after_refusals(shed_s):
        cfg = SimConfig(slo_tier=("interactive=0.5:0.5:0.05", "batch=0.5:30:0.25"), seed=3, tier_shed_s=shed_s)
        res = simulate(cfg, workload=workload(*rows), profile=linear_profile())
        reqs = sorted(res.requests, key=lambda r: r.arrival_s)
        refused_i = [r.arrival_s for r in reqs if r.slo.tier == "interactive" and r.rejected]
        assert refused_i, "the run must overload the node"
        # batch requests admitted less than 0.5 s after an interactive refusal
        return sum(1 for r in reqs if r.slo.tier == "batch" and not r.rejected
                   and (i := bisect.bisect_left(refused_i, r.arrival_s)) > 0 and r.arrival_s - refused_i[i - 1] < 0.5)

    assert batch_admitted_after_refusals(None) == 0  # default: the interactive TTFT, 0.5 s
    assert batch_admitted_after_refusals(0.0) > 0
