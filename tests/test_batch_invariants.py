"""Invariants every plan keeps, checked on random snapshots (Hypothesis)."""

from hypothesis import given
from hypothesis import strategies as st

from node.core.envelope import slack_s
from node.core.fairbatching import FairBatchingPolicy
from node.core.plan import Group, SkipReason
from node.core.policies import POLICY_NAMES, make_policy

from tests.conftest import NOW, limits_strategy, models, snapshots

fairbatching_knobs = st.fixed_dictionaries(
    {
        "anchor": st.sampled_from(["arrival", "first-token"]),
        "urgency": st.sampled_from(["budget+tpot", "tpot"]),
        "min_chunk_tokens": st.integers(1, 256),
        "budget_floor": st.booleans(),
        "lend": st.sampled_from(["always", "at-risk"]),
        "seat_pressure": st.sampled_from([None, 0.5]),
        "kv_pressure": st.sampled_from([None, 0.5]),
    }
)


@given(name=st.sampled_from(POLICY_NAMES), model=models, reqs=snapshots(), limits=limits_strategy)
def test_a_plan_never_breaks_a_hard_cap_or_the_memory_limit(name, model, reqs, limits):
    _check_hard_caps(make_policy(name, model).plan(reqs, limits, NOW), reqs, limits)


@given(knobs=fairbatching_knobs, relegate=st.sampled_from(["lost", "doomed", "fewest-late"]), model=models,
       reqs=snapshots(), limits=limits_strategy)
def test_a_relegating_plan_never_breaks_a_hard_cap_or_the_memory_limit(knobs, relegate, model, reqs, limits):
    plan = make_policy("fairbatching", model, relegate=relegate, **knobs).plan(reqs, limits, NOW)
    _check_hard_caps(plan, reqs, limits)
    # relegating never leaves a step empty that the paper's policy would fill
    if plan.is_empty:
        assert make_policy("fairbatching", model, **knobs).plan(reqs, limits, NOW).is_empty


def _check_hard_caps(plan, reqs, limits) -> None:
    by_id = {r.request_id: r for r in reqs}
    assert len(plan.items) <= limits.max_num_seqs
    assert plan.new_tokens == sum(i.new_tokens for i in plan.items) <= limits.max_num_batched_tokens
    blocks = 0
    for item in plan.items:
        req = by_id[item.request_id]
        assert item.is_prefill == req.is_prefill
        assert 1 <= item.new_tokens <= (req.remaining_prompt_tokens if req.is_prefill else 1)
        blocks += req.kv_blocks_needed(item.new_tokens, limits.block_size)
    assert plan.kv_blocks == blocks <= limits.kv_blocks_free
    # every request is either scheduled once or skipped once, with a reason
    scheduled = [i.request_id for i in plan.items]
    skipped = [s.request_id for s in plan.skipped]
    assert sorted(scheduled + skipped) == sorted(by_id)


@given(knobs=fairbatching_knobs, model=models, reqs=snapshots(), limits=limits_strategy)
def test_predicted_step_time_stays_within_budget_except_for_the_urgent_floor(knobs, model, reqs, limits):
    plan = make_policy("fairbatching", model, **knobs).plan(reqs, limits, NOW)
    if any(i.group is not Group.URGENT for i in plan.items):
        assert plan.predicted_s <= plan.budget_s * (1 + 1e-9)


@given(knobs=fairbatching_knobs, model=models, reqs=snapshots(), limits=limits_strategy)
def test_an_urgent_decode_is_never_left_out_while_a_non_urgent_item_is_in(knobs, model, reqs, limits):
    plan = make_policy("fairbatching", model, **knobs).plan(reqs, limits, NOW)
    non_urgent_in = any(i.group is not Group.URGENT for i in plan.items)
    for s in plan.skipped:
        if s.group is Group.URGENT:
            # Urgent decodes never lose to the time budget; only a hard limit can keep them out,
            # and a full step (sequences, tokens) keeps everything after them out too. A decode
            # denied a KV block may see a later one that needs no new block go in.
            assert s.reason in (SkipReason.SEQS, SkipReason.TOKENS, SkipReason.KV)
            if s.reason is not SkipReason.KV:
                assert not non_urgent_in


@given(knobs=fairbatching_knobs, model=models, reqs=snapshots(), limits=limits_strategy)
def test_order_within_each_group_is_earliest_deadline_first(knobs, model, reqs, limits):
    policy = make_policy("fairbatching", model, **knobs)
    plan = policy.plan(reqs, limits, NOW)
    by_id = {r.request_id: r for r in reqs}
    for group in Group:
        slacks = [i.slack_s for i in plan.items if i.group is group]
        assert slacks == sorted(slacks)
        for i in plan.items:
            assert i.slack_s == slack_s(by_id[i.request_id], NOW, policy.config.anchor)
    # groups come in the paper's order: urgent decodes, prefills, decodes ahead of schedule;
    # with lend=at-risk the prefills not at risk come after those decodes (relegation: test_relegation.py)
    order = [i.group for i in plan.items]
    rank = {Group.URGENT: 0, Group.PREFILL: 1, Group.DECODE: 2}
    if knobs["lend"] == "at-risk" and Group.DECODE in order:
        first_decode = order.index(Group.DECODE)
        order = order[:first_decode] + [g for g in order[first_decode:] if g is not Group.PREFILL]
    assert order == sorted(order, key=rank.__getitem__)


@given(model=models, reqs=snapshots(), limits=limits_strategy)
def test_every_urgent_decode_is_more_pressed_than_every_relaxed_one(model, reqs, limits):
    policy = FairBatchingPolicy(model)
    plan = policy.plan(reqs, limits, NOW)
    urgent = [i.slack_s for i in plan.items if i.group is Group.URGENT]
    relaxed = [i.slack_s for i in plan.items if i.group is Group.DECODE]
    if urgent and relaxed:
        assert max(urgent) <= min(relaxed)
