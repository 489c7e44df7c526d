"""FairBatching with two SLO classes on one node: the step bound and the urgency rule (issue: SLO tiers).

The budget floor and the urgency threshold bound the *step*, so they come from the tightest
TPOT among the decodes in the node: a loose (batch) decode never sets them while a tight one
runs, and a tight decode makes a loose one urgent only when the loose one's own slack is short.
"""

from __future__ import annotations

from node.core.plan import Group, Limits
from node.core.policies import make_policy
from node.core.request import SLO, RequestState

from tests.conftest import REF_MODEL

INTERACTIVE = SLO(1.0, 0.05, tier="interactive")
BATCH = SLO(30.0, 0.25, tier="batch", priority=1)
LIMITS = Limits(max_num_seqs=256, max_num_batched_tokens=8192)
NOW = 100.0


def decode(rid: str, slo: SLO, next_due_in_s: float) -> RequestState:
    """A decode with 10 tokens out whose next token (first-token anchor) is due ``next_due_in_s`` from now."""
    first = NOW + next_due_in_s - 10 * slo.tpot_s
    return RequestState(rid, first - 0.2, 500, slo, computed_tokens=500, output_tokens=10, first_token_s=first)


def fb():
    return make_policy("fairbatching", REF_MODEL, anchor="first-token")


def test_a_batch_decode_neither_sets_the_floor_nor_turns_urgent_beside_an_interactive_one():
    reqs = [decode("i", INTERACTIVE, 0.03), decode("b", BATCH, 0.2), RequestState("p", NOW - 0.1, 6000, INTERACTIVE)]
    plan = fb().plan(reqs, LIMITS, NOW)
    assert plan.budget_s == 0.05  # max(min decode slack 0.03, interactive TPOT floor 0.05)
    groups = {i.request_id: i.group for i in plan.items}
    assert groups["i"] is Group.URGENT and groups.get("b") is not Group.URGENT
    assert plan.urgent_decodes == 1
    # the batch decode is due in 0.2 s > budget + 0.05: it yields the step to the interactive prompt
    assert "p" in plan.prefill_chunks


def test_a_batch_decode_short_of_slack_is_urgent_by_its_own_deadline():
    reqs = [decode("i", INTERACTIVE, 0.04), decode("b", BATCH, 0.02)]
    plan = fb().plan(reqs, LIMITS, NOW)
    assert plan.urgent_decodes == 2  # its own envelope, whatever its class


def test_with_only_batch_decodes_an_interactive_prompt_gets_the_loose_step():
    """No tight decode to protect: the step may run to the batch TPOT, carrying a large chunk."""
    reqs = [decode("b", BATCH, 0.2), RequestState("p", NOW - 0.1, 6000, INTERACTIVE)]
    plan = fb().plan(reqs, LIMITS, NOW)
    assert plan.budget_s == 0.25
    tight = fb().plan([decode("i", INTERACTIVE, 0.04), RequestState("p", NOW - 0.1, 6000, INTERACTIVE)], LIMITS, NOW)
    assert plan.prefill_chunks["p"] > tight.prefill_chunks.get("p", 0)


def test_at_risk_lending_runs_decodes_before_a_prompt_whose_deadline_is_far():
    """lend=at-risk: a batch prompt due in 30 s waits behind the decodes ahead of their envelope;
    an interactive prompt due soon still goes first. The paper's order puts every prompt first."""
    # one decode due in 60 ms (urgent, it sets the 60 ms budget), twenty due in 300 ms (ahead of their envelope)
    relaxed = [decode("u", INTERACTIVE, 0.06)] + [decode(f"d{i}", INTERACTIVE, 0.3) for i in range(20)]
    batch_prompt = RequestState("b", NOW - 0.1, 8000, BATCH)
    tight_prompt = RequestState("i", NOW - 0.95, 8000, INTERACTIVE)  # 50 ms of slack left
    paper = fb().plan(relaxed + [batch_prompt], LIMITS, NOW)
    lending = make_policy("fairbatching", REF_MODEL, anchor="first-token", lend="at-risk")
    lent = lending.plan(relaxed + [batch_prompt], LIMITS, NOW)
    assert len(lent.decode_ids) > len(paper.decode_ids)  # the decodes ran instead of yielding
    order = [i.request_id for i in lent.items]
    assert order.index("b") > max(order.index(f"d{i}") for i in range(20) if f"d{i}" in order)
    urgent_first = lending.plan(relaxed + [tight_prompt], LIMITS, NOW)
    order = [i.request_id for i in urgent_first.items]
    assert order[:2] == ["u", "i"]  # the urgent decode, then the prompt at risk, before the decodes ahead
