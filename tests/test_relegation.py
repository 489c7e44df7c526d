"""Relegation (issue 10): requests that can no longer attain are served last, so the others still attain.

Also the TPOT guard band (``tpot_margin``) of the FairBatching planner, and that
both knobs reach the vLLM host through ``NodeConfig.knobs``.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.core.fairbatching import FairBatchingPolicy, Relegation, fewest_late, prefill_s_per_token
from node.vllm.node_config import NodeConfig
from node.core.plan import Group, Limits, SkipReason
from node.core.policies import make_policy
from node.core.request import SLO, RequestState

from tests.conftest import NOW, REF_MODEL, limits_strategy, models, snapshots

SLO_1S = SLO(ttft_s=1.0, tpot_s=0.05)
LIMITS = Limits(max_num_seqs=256, max_num_batched_tokens=4096)


def fb(**knobs) -> FairBatchingPolicy:
    return make_policy("fairbatching", REF_MODEL, anchor="first-token", **knobs)


def is_lost(req: RequestState, now: float) -> bool:
    """The paper's per-request test can no longer pass: the first-token deadline is gone."""
    deadline = req.arrival_s + req.slo.ttft_s
    return req.first_token_s > deadline if req.first_token_s is not None else now > deadline


def test_a_lost_prefill_waits_behind_one_that_can_still_make_its_deadline():
    now = 100.0
    late = RequestState("late", now - 1.5, 3000, SLO_1S)  # first-token deadline 0.5 s ago
    fresh = RequestState("fresh", now - 0.5, 3000, SLO_1S)  # 0.5 s to go
    edf = fb().plan([late, fresh], LIMITS, now)
    assert [i.request_id for i in edf.items][0] == "late"  # EDF: the most overdue first (the domino)
    assert "fresh" not in edf.prefill_chunks  # and it takes the step
    relegated = fb(relegate="lost").plan([late, fresh], LIMITS, now)
    assert [i.request_id for i in relegated.items][0] == "fresh"
    assert relegated.prefill_chunks["fresh"] == 3000  # the attainable prompt gets all it needs
    assert relegated.prefill_chunks.get("late", 0) <= LIMITS.max_num_batched_tokens - 3000  # what is left


def test_a_decode_whose_first_token_was_late_is_never_urgent_and_yields_to_the_others():
    now = 100.0
    late_dec = RequestState("late-dec", now - 10.0, 500, SLO_1S, computed_tokens=500, output_tokens=10,
                            first_token_s=now - 8.5)  # first token 1.5 s after arrival: lost
    on_time = RequestState("on-time", now - 1.0, 500, SLO_1S, computed_tokens=500, output_tokens=10,
                           first_token_s=now - 0.53)  # next token due in 0.02 s: urgent
    burst = [RequestState(f"p{i}", now - 0.9, 4000, SLO_1S) for i in range(3)]
    reqs = [late_dec, on_time] + burst
    edf = fb().plan(reqs, LIMITS, now)
    assert {"late-dec", "on-time"} <= set(edf.decode_ids) and edf.urgent_decodes == 2
    relegated = fb(relegate="lost").plan(reqs, LIMITS, now)
    assert "on-time" in relegated.decode_ids and relegated.urgent_decodes == 1
    skipped = {s.request_id: s for s in relegated.skipped}
    assert skipped["late-dec"].reason in (SkipReason.BUDGET, SkipReason.TOKENS)  # the burst used the step
    # With nothing else waiting it is served at once: relegated, not dropped.
    alone = fb(relegate="lost").plan([late_dec], LIMITS, now)
    assert alone.decode_ids == ["late-dec"]


def test_doomed_also_relegates_a_prefill_that_cannot_finish_by_its_deadline_even_alone():
    now = 100.0
    # 4000 tokens need about 90 ms alone; 50 ms are left.
    doomed = RequestState("doomed", now - 0.95, 4000, SLO_1S)
    ok = RequestState("ok", now - 0.2, 2000, SLO_1S)
    assert [i.request_id for i in fb(relegate="lost").plan([doomed, ok], LIMITS, now).items][0] == "doomed"
    assert [i.request_id for i in fb(relegate="doomed").plan([doomed, ok], LIMITS, now).items][0] == "ok"


def test_fewest_late_relegates_a_long_prompt_that_would_make_the_short_ones_behind_it_late():
    now = 100.0
    # No decodes: steps of one 50 ms TPOT carry about 2,100 prompt tokens (REF_MODEL), 23.7 us a token.
    # The long prompt alone takes about 0.19 s of its 0.2 s (not doomed); the three short ones are due
    # 10 ms after it, so EDF makes all three late behind it. Moore's rule drops the long one instead.
    long = RequestState("long", now - 0.8, 8000, SLO_1S)
    shorts = [RequestState(f"s{i}", now - 0.79, 1000, SLO_1S) for i in range(3)]
    doomed = fb(relegate="doomed").plan([long] + shorts, LIMITS, now)
    assert doomed.items[0].request_id == "long"
    fewest = fb(relegate="fewest-late").plan([long] + shorts, LIMITS, now)
    assert [i.request_id for i in fewest.items][:3] == ["s0", "s1", "s2"]
    assert all(fewest.prefill_chunks[f"s{i}"] == 1000 for i in range(3))
    # Relegated, not dropped: alone it is served at once.
    assert fb(relegate="fewest-late").plan([long], LIMITS, now).prefill_chunks["long"] > 0


def test_fewest_late_keeps_every_prompt_when_they_all_fit():
    now = 100.0
    reqs = [RequestState(f"p{i}", now - 0.5, 2000, SLO_1S) for i in range(4)]  # 0.19 s of work, 0.5 s left
    assert fb(relegate="fewest-late").plan(reqs, LIMITS, now) == fb(relegate="doomed").plan(reqs, LIMITS, now)


def _most_on_time(costs: list[float], due: list[float]) -> int:
    """Brute force: the largest subset that, run back to back in the given order, is all in time."""
    best = 0
    for mask in range(1 << len(costs)):
        t, ok = 0.0, True
        for k in range(len(costs)):
            if mask >> k & 1:
                t += costs[k]
                ok = ok and t <= due[k]
        if ok:
            best = max(best, bin(mask).count("1"))
    return best


@given(jobs=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(-0.5, 3.0)), max_size=9))
def test_moores_algorithm_keeps_as_many_in_time_as_any_subset(jobs):
    jobs = sorted(jobs, key=lambda j: j[1])  # EDF order
    costs, due = [c for c, _ in jobs], [d for _, d in jobs]
    dropped = fewest_late(costs, due)
    t = 0.0
    for k in range(len(jobs)):
        if k not in dropped:
            t += costs[k]
            assert t <= due[k] + 1e-9  # every kept job in time
    assert len(jobs) - len(dropped) == _most_on_time(costs, due)


relegation_knobs = st.fixed_dictionaries(
    {
        "anchor": st.sampled_from(["arrival", "first-token"]),
        "relegate": st.sampled_from(["lost", "doomed", "fewest-late"]),
        "tpot_margin": st.sampled_from([0.0, 0.1, 0.3]),
        "min_chunk_tokens": st.integers(1, 64),
    }
)


@given(knobs=relegation_knobs, model=models, reqs=snapshots(), limits=limits_strategy)
def test_relegated_requests_come_after_every_other_item_and_are_never_urgent(knobs, model, reqs, limits):
    plan = make_policy("fairbatching", model, **knobs).plan(reqs, limits, NOW)
    by_id = {r.request_id: r for r in reqs}
    lost = [is_lost(by_id[i.request_id], NOW) for i in plan.items]
    if knobs["relegate"] == "lost":  # (doomed relegates a superset; checked by the order below when it agrees)
        assert lost == sorted(lost)  # every non-lost item before every lost one
    for item, gone in zip(plan.items, lost):
        if gone:
            assert item.group is not Group.URGENT
    # the hard caps hold as for every plan
    assert len(plan.items) <= limits.max_num_seqs
    assert plan.new_tokens <= limits.max_num_batched_tokens and plan.kv_blocks <= limits.kv_blocks_free
    assert len({i.request_id for i in plan.items} | {s.request_id for s in plan.skipped}) == len(reqs)


@given(model=models, reqs=snapshots(), limits=limits_strategy,
       relegate=st.sampled_from(["lost", "doomed", "fewest-late"]), anchor=st.sampled_from(["arrival", "first-token"]))
def test_when_no_request_is_lost_relegation_plans_exactly_as_the_paper(model, reqs, limits, relegate, anchor):
    # A TTFT SLO of 10^6 s: every first-token deadline is still ahead (or was met), no prompt is
    # doomed, and the queue together fits (fewest-late). 100 s was not enough for "doomed": a
    # 4096-token prompt at one token per step (max_num_batched_tokens 1) with a = 20 ms and a safety
    # factor 1.5 needs about 124 s alone, and hypothesis found a 2861-token prompt needing 84.02 s with
    # 84 s left; a queue of such prompts together needs some thousands of seconds.
    reqs = [dataclasses.replace(r, slo=SLO(1e6, r.slo.tpot_s)) for r in reqs]
    paper = make_policy("fairbatching", model, anchor=anchor).plan(reqs, limits, NOW)
    relegated = make_policy("fairbatching", model, anchor=anchor, relegate=relegate).plan(reqs, limits, NOW)
    assert relegated == paper


def test_tpot_margin_plans_decode_deadlines_earlier():
    now = 100.0
    # First-token anchor: token 10 due at first + 0.5 s = now + 0.07 s; with a 40 % margin at first + 0.3 s.
    dec = RequestState("d", now - 1.0, 500, SLO_1S, computed_tokens=500, output_tokens=10, first_token_s=now - 0.43)
    burst = [RequestState(f"p{i}", now - 0.5, 4000, SLO_1S) for i in range(2)]
    plain = fb(urgency="tpot").plan([dec] + burst, LIMITS, now)
    assert plain.urgent_decodes == 0
    guarded = fb(urgency="tpot", tpot_margin=0.4).plan([dec] + burst, LIMITS, now)
    assert guarded.urgent_decodes == 1 and guarded.items[0].slack_s == pytest.approx(-0.13)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="tpot_margin"):
            make_policy("fairbatching", REF_MODEL, tpot_margin=bad)
    with pytest.raises(ValueError):
        make_policy("fairbatching", REF_MODEL, relegate="sometimes")


def test_the_knobs_reach_the_engine_through_node_config():
    cfg = NodeConfig.from_env(NodeConfig(knobs={"anchor": "first-token", "relegate": "lost", "tpot_margin": 0.1}).to_env())
    policy = make_policy(cfg.policy, REF_MODEL, **cfg.knobs)
    assert policy.config.relegate is Relegation.LOST and policy.config.tpot_margin == 0.1


def test_seat_order_puts_the_requests_plan_would_relegate_last():
    now = 100.0
    lost = RequestState("lost", now - 1.5, 100, SLO_1S)
    fresh = RequestState("fresh", now - 0.5, 100, SLO_1S)
    assert [s.request_id for s in fb().seat_order([fresh, lost], [], LIMITS, now)] == ["lost", "fresh"]  # EDF
    assert [s.request_id for s in fb(relegate="lost").seat_order([fresh, lost], [], LIMITS, now)] == ["fresh", "lost"]
    # Moore's rule over the waiting prompts: the long one behind which the short ones would be late goes last.
    long = RequestState("long", now - 0.8, 8000, SLO_1S)
    shorts = [RequestState(f"s{i}", now - 0.79, 1000, SLO_1S) for i in range(3)]
    order = fb(relegate="fewest-late").seat_order([long] + shorts, [], LIMITS, now)
    assert [s.request_id for s in order] == ["s0", "s1", "s2", "long"]
    assert [s.request_id for s in fb(relegate="doomed").seat_order([long] + shorts, [], LIMITS, now)][0] == "long"


def test_fewest_late_prices_prompts_at_the_rate_the_planner_runs_them():
    now = 100.0
    # An idle node runs prompts in full 4096-token steps (22.4 us a token here): two 6000-token prompts
    # due in 0.275 s both make it, so nothing is relegated (priced at one 50 ms step's rate, 23.7 us a
    # token, the second looked late and Moore relegated the first).
    reqs = [RequestState(f"p{i}", now - 0.725, 6000, SLO_1S) for i in range(2)]
    assert fb(relegate="fewest-late").plan(reqs, LIMITS, now) == fb(relegate="doomed").plan(reqs, LIMITS, now)


def test_fewest_late_counts_a_loose_decode_in_the_share_of_steps_it_runs():
    # One interactive decode (50 ms) beside 500 batch decodes (250 ms): a batch decode runs in one
    # step in five, so prompt tokens still fit each step (reserving every decode every step left none).
    now = 100.0
    batch = SLO(ttft_s=30.0, tpot_s=0.25)
    decodes = [RequestState("i", now - 1.0, 500, SLO_1S, computed_tokens=500, output_tokens=5, first_token_s=now - 0.8)]
    decodes += [RequestState(f"b{k}", now - 1.0, 500, batch, computed_tokens=500, output_tokens=2,
                             first_token_s=now - 0.5) for k in range(500)]
    entries = [(0.0, d.arrival_s, d.request_id, d) for d in decodes]
    assert prefill_s_per_token(entries, REF_MODEL, Limits(max_num_seqs=1024, max_num_batched_tokens=8192), 1.0) \
        is not None


def test_the_prompt_rate_beside_decodes_is_pabs_paced_rate():
    # prefill_s_per_token with decodes is PAB's paced rate written out: a step of tau = pace x the
    # tightest TPOT carries each decode's share tau / (pace x its TPOT) and a prompt chunk in what is left.
    from node.core.pab import prefill_chunk_per_step

    now, pace = 100.0, 0.8
    batch = SLO(ttft_s=30.0, tpot_s=0.25)
    decodes = [RequestState(f"i{k}", now - 1.0, 300 + 40 * k, SLO_1S, computed_tokens=300 + 40 * k,
                            output_tokens=3 + k, first_token_s=now - 0.5) for k in range(3)]
    decodes += [RequestState(f"b{k}", now - 1.0, 900 + 70 * k, batch, computed_tokens=900 + 70 * k,
                             output_tokens=1 + k, first_token_s=now - 0.5) for k in range(2)]
    entries = [(0.0, d.arrival_s, d.request_id, d) for d in decodes]
    limits = Limits(max_num_seqs=1024, max_num_batched_tokens=2048)
    tau = pace * 0.05
    weights = [tau / (pace * d.slo.tpot_s) for d in decodes]  # 1, 1, 1, 0.2, 0.2: 3.4 decodes a step
    reservation = REF_MODEL.safety_factor * sum(
        w * (REF_MODEL.b_s_per_token + REF_MODEL.c_s_per_context_token * d.decode_context_tokens)
        for w, d in zip(weights, decodes))
    q, step_s = prefill_chunk_per_step(REF_MODEL, tau, reservation, 4, limits.max_num_batched_tokens)
    attention = REF_MODEL.safety_factor * REF_MODEL.attn_prefill_s_per_token_sq
    expected = (step_s - attention * 0.5 * q * q) / q
    assert prefill_s_per_token(entries, REF_MODEL, limits, pace) == pytest.approx(expected, rel=1e-12)
