"""Placement policies: PAB places by budget and debits, baselines do what their names say."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.core.placement import NodeView, idle_prefill_tokens, retry_after_s
from balancer.core.policies import PLACEMENT_NAMES, make_placement


def views(policy, **pabs):
    for node, pab in pabs.items():
        policy.update(NodeView(int(node[1:]), pab_tokens=pab, prefill_rate_tps=1000.0, recovery_tps=10.0))


def test_pab_picks_the_node_with_the_largest_budget():
    pab = make_placement("pab", [0, 1, 2])
    views(pab, n0=500, n1=3000, n2=1200)
    assert pab.choose("r", 100).node_id == 1


def test_pab_debits_at_once_so_a_burst_spreads_before_the_next_report():
    pab = make_placement("pab", [0, 1])
    views(pab, n0=1000, n1=900)
    first = pab.choose("a", 400)
    second = pab.choose("b", 400)
    assert (first.node_id, second.node_id) == (0, 1)
    assert pab.view(0).pab_tokens == 600 and pab.view(1).pab_tokens == 500
    assert pab.view(0).in_flight == 1 and pab.view(0).queued_prefill_tokens == 400


def test_pab_rejects_when_no_node_has_budget_for_the_prompt():
    pab = make_placement("pab", [0, 1])
    views(pab, n0=100, n1=250)
    decision = pab.choose("big", 300)
    assert decision.rejected and decision.node_id is None
    assert decision.reason == "no-budget"
    assert decision.retry_after_s == pytest.approx(5.0)  # (300 - 250) tokens at 10 tokens/s
    assert pab.view(1).pab_tokens == 250  # a rejection debits nothing


def test_pab_without_rejection_places_on_the_largest_budget_anyway():
    pab = make_placement("pab", [0, 1], reject=False)
    views(pab, n0=100, n1=250)
    assert pab.choose("big", 300).node_id == 1


def test_pab_best_fit_takes_the_smallest_budget_that_covers_the_prompt():
    pab = make_placement("pab", [0, 1, 2], fit="best")
    views(pab, n0=5000, n1=350, n2=200)
    assert pab.choose("r", 300).node_id == 1


def test_a_fresh_report_replaces_the_debited_view_and_a_stale_one_is_ignored():
    pab = make_placement("pab", [0])
    pab.update(NodeView(0, pab_tokens=1000, reported_at_s=1.0))
    pab.choose("a", 700)
    assert pab.view(0).pab_tokens == 300
    pab.update(NodeView(0, pab_tokens=800, reported_at_s=2.0))
    assert pab.view(0).pab_tokens == 800
    pab.update(NodeView(0, pab_tokens=5, reported_at_s=1.5))  # delivered late: older than what we hold
    assert pab.view(0).pab_tokens == 800


def test_round_robin_cycles_over_the_nodes():
    rr = make_placement("round-robin", [0, 1, 2])
    assert [rr.choose(str(i), 10).node_id for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_power_of_two_takes_the_sampled_node_with_fewer_requests_in_flight():
    p2 = make_placement("power-of-two", [0, 1], rng=random.Random(3))
    p2.choose("a", 10)  # one node now has a request in flight
    loaded = 0 if p2.view(0).in_flight else 1
    # With two nodes both are always sampled: the idle one wins every time until balanced.
    assert p2.choose("b", 10).node_id == 1 - loaded
    p2.release("a" if loaded == p2.placements["a"].node_id else "b")
    assert p2.view(loaded).in_flight == 0


def test_power_of_two_is_deterministic_given_its_rng():
    picks = []
    for _ in range(2):
        p2 = make_placement("power-of-two", list(range(8)), rng=random.Random(7))
        picks.append([p2.choose(str(i), 10).node_id for i in range(50)])
    assert picks[0] == picks[1]


def test_least_prefill_takes_the_fewest_outstanding_prompt_tokens_and_debits_them():
    lp = make_placement("least-prefill", [0, 1, 2])
    for node, queued in ((0, 900), (1, 100), (2, 400)):
        lp.update(NodeView(node, queued_prefill_tokens=queued))
    assert lp.choose("a", 500).node_id == 1  # 100 -> 600 queued
    assert lp.choose("b", 10).node_id == 2


def test_queue_kv_prefers_short_queues_and_free_kv():
    qk = make_placement("queue-kv", [0, 1, 2], rng=random.Random(0))
    qk.update(NodeView(0, waiting=8, kv_usage=0.1))
    qk.update(NodeView(1, waiting=2, kv_usage=0.2))
    qk.update(NodeView(2, waiting=2, kv_usage=0.9))
    assert qk.choose("a", 10).node_id == 1


def test_admission_cap_rejects_past_what_an_idle_node_prefills_within_the_ttft():
    cap = idle_prefill_tokens(1.0, a_s=0.0056, b_s_per_token=21e-6)
    assert cap == int((1.0 - 0.0056) / 21e-6)
    lp = make_placement("least-prefill", [0, 1], admission_cap=1000)
    lp.update(NodeView(0, queued_prefill_tokens=800))
    lp.update(NodeView(1, queued_prefill_tokens=900))
    assert lp.choose("fits", 200).node_id == 0
    decision = lp.choose("too-much", 200)  # best node now holds 900 + 200 > 1000
    assert decision.rejected and decision.reason == "admission-cap"


@pytest.mark.parametrize("name", PLACEMENT_NAMES)
def test_every_policy_places_on_a_known_node_and_tracks_in_flight(name):
    policy = make_placement(name, [3, 5, 9], rng=random.Random(1))
    for node in (3, 5, 9):
        policy.update(NodeView(node, pab_tokens=10_000))
    placed = [policy.choose(str(i), 50).node_id for i in range(6)]
    assert set(placed) <= {3, 5, 9}
    assert sum(policy.view(n).in_flight for n in (3, 5, 9)) == 6
    for i in range(6):
        assert policy.release(str(i))
    assert sum(policy.view(n).in_flight for n in (3, 5, 9)) == 0


def test_unknown_names_and_knobs_are_refused():
    with pytest.raises(ValueError, match="unknown balancer"):
        make_placement("random", [0])
    with pytest.raises(ValueError, match="balancer 'round-robin'"):
        make_placement("round-robin", [0], fit="best")
    with pytest.raises(ValueError):
        make_placement("pab", [0], fit="worst")
    with pytest.raises(ValueError):
        make_placement("pab", [])
    assert not make_placement("pab", [0]).release("never-placed")


_events = st.lists(
    st.one_of(
        st.tuples(st.just("report"), st.integers(0, 3), st.floats(-5000, 20000, allow_nan=False)),
        st.tuples(st.just("choose"), st.integers(1, 8000), st.just(0.0)),
        st.tuples(st.just("complete"), st.integers(0, 60), st.just(0.0)),
    ),
    max_size=60,
)


@given(_events, st.sampled_from(["largest", "best"]))
def test_pab_never_places_on_a_node_whose_view_lacks_budget(events, fit):
    pab = make_placement("pab", [0, 1, 2, 3], fit=fit)
    clock = 0.0
    for i, (kind, x, y) in enumerate(events):
        if kind == "report":
            clock += 0.01
            pab.update(NodeView(x, pab_tokens=y, reported_at_s=clock))
        elif kind == "choose":
            before = {n: pab.view(n).pab_tokens for n in range(4)}
            decision = pab.choose(f"r{i}", x)
            if decision.rejected:
                assert max(before.values()) < x
            else:
                assert before[decision.node_id] >= x
                assert pab.view(decision.node_id).pab_tokens == pytest.approx(before[decision.node_id] - x)
        else:
            pab.release(f"r{x}")


def test_a_stale_report_keeps_the_debits_of_placements_it_has_not_seen():
    pab = make_placement("pab", [0, 1])
    pab.update(NodeView(0, pab_tokens=1000, received_ids=frozenset(), reported_at_s=0.0))
    pab.update(NodeView(1, pab_tokens=900, received_ids=frozenset(), reported_at_s=0.0))
    assert pab.choose("a", 300).node_id == 0  # node 0: 700 left
    assert pab.choose("b", 300).node_id == 1  # node 1: 600 left
    assert pab.choose("c", 300).node_id == 0  # node 0: 400 left
    # Node 0 measured 1000 before any of its two placements arrived: both debits stay.
    pab.update(NodeView(0, pab_tokens=1000, received_ids=frozenset(), reported_at_s=0.1))
    assert pab.view(0).pab_tokens == 400 and pab.view(0).queued_prefill_tokens == 600
    assert pab.in_transit(0) == 2
    # A report that has seen the first one keeps only the second.
    pab.update(NodeView(0, pab_tokens=650, received_ids=frozenset({"a"}), reported_at_s=0.2))
    assert pab.view(0).pab_tokens == 350 and pab.in_transit(0) == 1
    # Re-applying the same report again and again never debits twice (the old fallback bug).
    for t in (0.21, 0.22, 0.23):
        pab.update(NodeView(0, pab_tokens=650, received_ids=frozenset({"a"}), reported_at_s=t))
    assert pab.view(0).pab_tokens == 350
    # Without ids a report replaces the view.
    pab.update(NodeView(0, pab_tokens=650, reported_at_s=0.3))
    assert pab.view(0).pab_tokens == 650 and pab.in_transit(0) == 0


def test_in_transit_debits_are_keyed_by_request_not_counted():
    """A placement released before it reached its node (client gone) must not hide another's debit."""
    pab = make_placement("pab", [0])
    pab.update(NodeView(0, pab_tokens=1000, received_ids=frozenset(), reported_at_s=0.0))
    pab.choose("gone", 400)
    pab.choose("kept", 100)
    assert pab.release("gone")  # never arrives at the node
    # The node has seen one request: "kept". A count would acknowledge "gone" (the first) instead.
    pab.update(NodeView(0, pab_tokens=900, received_ids=frozenset({"kept"}), reported_at_s=0.1))
    assert pab.view(0).pab_tokens == 900 and pab.in_transit(0) == 0
    # And a report before "kept" arrives keeps its debit only.
    pab.choose("late", 200)
    pab.update(NodeView(0, pab_tokens=900, received_ids=frozenset({"kept"}), reported_at_s=0.2))
    assert pab.view(0).pab_tokens == 700


def test_release_on_disconnect_before_and_after_the_first_token():
    pab = make_placement("pab", [0])
    pab.update(NodeView(0, pab_tokens=1000, received_ids=frozenset(), reported_at_s=0.0))
    pab.choose("before", 300)  # client leaves while the request is still in transit
    pab.choose("after", 300)  # client leaves after its node acknowledged it
    pab.update(NodeView(0, pab_tokens=700, received_ids=frozenset({"after"}), reported_at_s=0.1))
    assert pab.release("before") and pab.release("after")
    assert pab.view(0).in_flight == 0 and pab.in_transit(0) == 0 and not pab.placements
    assert not pab.release("after")  # a second release (completion after cancel) is harmless
    pab.update(NodeView(0, pab_tokens=1000, received_ids=frozenset(), reported_at_s=0.2))
    assert pab.view(0).pab_tokens == 1000


def test_a_retried_request_keeps_its_admission_and_moves_its_debit():
    pab = make_placement("pab", [0, 1])
    pab.update(NodeView(0, pab_tokens=1000, received_ids=frozenset(), reported_at_s=0.0))
    pab.update(NodeView(1, pab_tokens=200, received_ids=frozenset(), reported_at_s=0.0))
    assert pab.choose("r", 900).node_id == 0
    # Asked again (Serve retries the call): the same placement, no second debit, no refusal.
    assert pab.choose("r", 900).node_id == 0 and pab.view(0).pab_tokens == 100
    # Node 0 died: the request moves to node 1 although node 1's budget is short.
    assert pab.move("r") == 1
    assert pab.view(1).in_flight == 1 and pab.view(0).in_flight == 0
    assert pab.view(1).pab_tokens == 200 - 900
    assert pab.move("r", exclude=[0]) is None  # nowhere else to go


@pytest.mark.parametrize("pab_tokens,recovery_tps,expected", [
    (-5000.0, 1000.0, 5.5),  # saturated: the queue drains at its recovery rate
    (400.0, 0.0, 30.0),  # a node whose budget does not grow back: the upper bound
    (-1e9, 1.0, 30.0),  # a very slow node: clamped to 30 s
    (300.0, 1e6, 1.0),  # nearly there: never below 1 s
])
def test_retry_after_predicts_when_the_budget_covers_the_prompt(pab_tokens, recovery_tps, expected):
    pab = make_placement("pab", [0])
    pab.update(NodeView(0, pab_tokens=pab_tokens, recovery_tps=recovery_tps, reported_at_s=0.0))
    decision = pab.choose("r", 500)
    assert decision.rejected
    assert decision.retry_after_s == pytest.approx(expected)


def test_retry_after_takes_the_node_that_recovers_first():
    assert retry_after_s(1000, [(-4000.0, 500.0, 0.0), (0.0, 100.0, 0.0)]) == pytest.approx(10.0)
    assert retry_after_s(1000, [(2000.0, 0.0, 0.0)]) == 1.0  # refused by a cap while the budget covers it
    # a node with budget but no free slot: its next departure
    assert retry_after_s(1000, [(2000.0, 0.0, 4.0), (-1e6, 10.0, 0.0)]) == pytest.approx(4.0)


def test_a_burst_of_short_prompts_stops_at_the_free_slots():
    """Tokens alone would admit all of them: each placement also takes a slot until the next report."""
    pab = make_placement("pab", [0, 1])
    pab.update(NodeView(0, pab_tokens=1e6, slots_free=2, slot_wait_s=3.0, reported_at_s=0.0))
    pab.update(NodeView(1, pab_tokens=1e6, slots_free=1, slot_wait_s=5.0, reported_at_s=0.0))
    placed = [pab.choose(f"r{i}", 10) for i in range(4)]
    assert [d.node_id for d in placed] == [0, 1, 0, None]  # largest budget first, two slots on node 0
    assert placed[-1].retry_after_s == pytest.approx(3.0)


def test_in_flight_cap_refuses_past_the_limit():
    p2 = make_placement("power-of-two", [0, 1], max_in_flight=1)
    assert not p2.choose("a", 10).rejected and not p2.choose("b", 10).rejected
    d = p2.choose("c", 10)
    assert d.rejected and d.reason == "in-flight-cap"
    p2.release("a")
    assert not p2.choose("c", 10).rejected


# -- SLO tiers: a budget per tier, a share held for the tightest ------------------------------------


def test_a_looser_tier_needs_its_own_budget_and_the_tightest_ones():
    """A batch request is placed where its own (30 s) budget and the interactive (1 s) one both cover it."""
    from balancer.core.pab_placement import PABPlacement
    from balancer.core.placement import NodeView

    p = PABPlacement([0, 1])
    p.update(NodeView(0, pab_tokens=2000, tier_pab_tokens={"batch": 300}, idle_pab_tokens=1000, reported_at_s=1))
    p.update(NodeView(1, pab_tokens=600, tier_pab_tokens={"batch": 5000}, idle_pab_tokens=1000, reported_at_s=1))
    assert p.choose("b1", 500, tier="batch").node_id == 1  # node 0's batch queue is full (300 < 500)
    assert p.choose("b2", 500, tier="batch").rejected  # node 1's interactive budget is spent now (100 < 500)
    assert p.choose("i1", 500).node_id == 0  # the interactive request still fits node 0
    # the debit reaches every tier's budget
    assert p.view(1).pab_tokens == 100 and p.view(1).tier_pab_tokens == {"batch": 4500}


def test_the_held_share_refuses_the_looser_tier_first():
    from balancer.core.pab_placement import PABPlacement
    from balancer.core.placement import NodeView

    view = NodeView(0, pab_tokens=250, tier_pab_tokens={"batch": 5000}, idle_pab_tokens=1000, reported_at_s=1,
                    slots_free=50, max_num_seqs=100)
    p = PABPlacement([0])
    p.update(view)
    refused = p.choose("b1", 10, held_fraction=0.3, tier="batch")  # 250 < 10 + 0.3 * 1000 held
    assert refused.rejected and refused.reason == "no-budget-held" and refused.retry_after_s >= 1.0
    assert not p.choose("b2", 10, held_fraction=0.2, tier="batch").rejected  # 250 >= 10 + 200
    assert not p.choose("i1", 200).rejected  # the tightest tier takes what is held (240 >= 200)

    # seats: a held request must leave that share of max_num_seqs free
    p = PABPlacement([0])
    p.update(NodeView(0, pab_tokens=10_000, tier_pab_tokens={"batch": 10_000}, idle_pab_tokens=1000,
                      reported_at_s=1, slots_free=20, max_num_seqs=100))
    assert p.choose("b1", 10, held_fraction=0.3, tier="batch").rejected  # 20 < 1 + 30 seats
    assert not p.choose("i1", 10).rejected

    # KV: a held request must leave that share of the KV capacity in the budget's KV limit
    p = PABPlacement([0])
    p.update(NodeView(0, pab_tokens=10_000, tier_pab_tokens={"batch": 10_000}, idle_pab_tokens=1000,
                      reported_at_s=1, kv_capacity_tokens=100_000, kv_pab_tokens=10_000, expected_output_tokens=200))
    assert p.choose("b1", 500, held_fraction=0.1, tier="batch").rejected  # 10,000 < 500 + 10,000 held
    assert not p.choose("i1", 500).rejected  # the tightest tier takes what is held
    assert p.view(0).kv_pab_tokens == 9_300  # the placement's debit reaches the KV limit: prompt and output
    assert not p.choose("b2", 500, held_fraction=0.05, tier="batch").rejected  # 9,300 >= 500 + 5,000


def test_routers_sharing_a_node_split_its_kv_limit_and_what_is_held_of_it():
    """Two balancers placing on one node each spend half its KV limit and keep half the held share: together
    they let the looser tier take no more KV than one balancer would (kv_pab - h * capacity)."""
    from balancer.core.pab_placement import PABPlacement
    from balancer.core.placement import NodeView

    view = NodeView(0, pab_tokens=60_000, tier_pab_tokens={"batch": 60_000}, idle_pab_tokens=1000, reported_at_s=1,
                    kv_capacity_tokens=450_000, kv_pab_tokens=60_000)
    half = view.shared(2)
    assert half.kv_pab_tokens == 30_000 and half.budget_share == 0.5
    admitted = 0
    for router in (PABPlacement([0]), PABPlacement([0])):
        router.set_routers(2)
        router.update(view)
        for i in range(10):
            if not router.choose(f"b{i}", 2_500, held_fraction=0.1, tier="batch").rejected:
                admitted += 2_500
    assert admitted == 15_000  # 60,000 - 0.1 * 450,000, split between the two
    assert view.shared(1) is view and NodeView(0, kv_pab_tokens=-5.0).shared(2).kv_pab_tokens == -5.0


@pytest.mark.parametrize("name", PLACEMENT_NAMES)
def test_after_a_tightest_class_refusal_looser_classes_are_shed_for_tier_shed_s(name):
    """Batch is shed before interactive is refused again: a refusal of the tightest class (tier None)
    refuses every looser request for tier_shed_s seconds of the caller's clock, however small its
    prompt; then they are admitted again. Without now_s, or with tier_shed_s None, nothing changes."""
    p = make_placement(name, [0], admission_cap=1000, tier_shed_s=2.0)
    p.update(NodeView(0, pab_tokens=1000, tier_pab_tokens={"batch": 10_000}, idle_pab_tokens=1000, reported_at_s=1))
    assert not p.choose("b0", 10, 0.0, "batch", now_s=9.0).rejected  # no refusal yet
    assert p.choose("i1", 5000, now_s=10.0).rejected  # the tightest class refused (over the cap)
    shed = p.choose("b1", 10, 0.0, "batch", now_s=11.0)
    assert shed.rejected and shed.reason == "shed-looser-tier" and shed.retry_after_s >= 1.0
    assert not p.choose("i2", 10, now_s=11.0).rejected  # the tightest class itself is not shed
    assert not p.choose("b2", 10, 0.0, "batch", now_s=12.5).rejected  # the window is over
    assert not p.choose("b3", 10, 0.0, "batch").rejected  # no clock: no shedding

    off = make_placement(name, [0], admission_cap=1000)
    off.update(NodeView(0, pab_tokens=1000, idle_pab_tokens=1000, reported_at_s=1))
    assert off.choose("i1", 5000, now_s=10.0).rejected
    assert not off.choose("b1", 10, 0.0, "batch", now_s=10.5).rejected
    with pytest.raises(ValueError, match="tier_shed_s"):
        make_placement(name, [0], tier_shed_s=-1.0)


def test_held_fraction_out_of_range_is_refused():
    from balancer.core.pab_placement import PABPlacement

    with pytest.raises(ValueError, match="held_fraction"):
        PABPlacement([0]).choose("r", 10, held_fraction=1.0)


def test_view_age_is_the_mean_age_of_the_nodes_reports_at_the_decision():
    """What a live balancer reports and the simulator matches: how old the budgets are when it decides."""
    pab = make_placement("pab", [0, 1])
    assert pab.view_age_s(5.0) is None  # no node reported yet
    pab.update(NodeView(0, pab_tokens=1000, reported_at_s=4.0))
    assert pab.view_age_s(5.0) == pytest.approx(1.0)  # only the node that reported
    pab.update(NodeView(1, pab_tokens=1000, reported_at_s=4.5))
    pab.choose("r", 100)  # a debit keeps the report's stamp
    assert pab.view_age_s(5.0) == pytest.approx(0.75)
