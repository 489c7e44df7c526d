"""The behaviour FairBatching exists for, against the decode-first baselines."""

import pytest

from node.core.envelope import Anchor
from node.core.plan import Group, Limits, SkipReason
from node.core.policies import make_policy
from node.core.request import SLO, RequestState

from tests.conftest import REF_MODEL

SLO_DEFAULT = SLO(ttft_s=1.0, tpot_s=0.05)
LIMITS = Limits(max_num_seqs=256, max_num_batched_tokens=8192)


def ahead_decode(now: float) -> RequestState:
    # First token came early; the next is not due for a while.
    return RequestState("ahead", now - 0.5, 1000, SLO(ttft_s=1.0, tpot_s=0.2), computed_tokens=1000,
                        output_tokens=5, first_token_s=now - 0.45)


def prefill_burst(now: float, n: int = 4) -> list[RequestState]:
    # Prompts that have waited long enough to be close to their TTFT deadline.
    return [RequestState(f"p{i}", now - 0.8, 2000, SLO_DEFAULT) for i in range(n)]


def test_a_decode_ahead_of_its_envelope_yields_to_a_prefill_burst():
    now = 50.0
    tight = RequestState("tight", now - 1.0, 500, SLO(1.0, 0.03), computed_tokens=500, output_tokens=10,
                         first_token_s=now - 0.7)
    reqs = [ahead_decode(now), tight] + prefill_burst(now)
    plan = make_policy("fairbatching", REF_MODEL, anchor="first-token").plan(reqs, LIMITS, now)
    skipped = {s.request_id: s for s in plan.skipped}
    assert skipped["ahead"].reason is SkipReason.BUDGET and skipped["ahead"].group is Group.DECODE
    assert "tight" in plan.decode_ids  # a decode close to its deadline keeps its token
    assert plan.prefill_chunks  # the burst got the step


def test_under_seat_pressure_a_decode_ahead_of_its_envelope_is_served_anyway():
    # The same step as above, on a node whose sequence seats are nearly all taken: pacing the
    # ahead decode would keep its seat busy longer, so with seat_pressure every decode runs.
    now = 50.0
    tight = RequestState("tight", now - 1.0, 500, SLO(1.0, 0.03), computed_tokens=500, output_tokens=10,
                         first_token_s=now - 0.7)
    reqs = [ahead_decode(now), tight] + prefill_burst(now)
    few_seats = Limits(max_num_seqs=6, max_num_batched_tokens=8192)
    paced = make_policy("fairbatching", REF_MODEL, anchor="first-token").plan(reqs, few_seats, now)
    assert "ahead" not in paced.decode_ids
    pressed = make_policy("fairbatching", REF_MODEL, anchor="first-token", seat_pressure=0.8).plan(reqs, few_seats, now)
    assert "ahead" in pressed.decode_ids and pressed.urgent_decodes == 2
    roomy = make_policy("fairbatching", REF_MODEL, anchor="first-token", seat_pressure=0.8).plan(reqs, LIMITS, now)
    assert "ahead" not in roomy.decode_ids  # plenty of seats: paced as usual
    with pytest.raises(ValueError, match="seat_pressure"):
        make_policy("fairbatching", REF_MODEL, seat_pressure=1.5)


def test_under_kv_pressure_a_decode_ahead_of_its_envelope_is_served_anyway():
    # The same step again, on a node with seats to spare whose KV cache is 60 % allocated: with
    # kv_pressure 0.5 the ahead decode runs (finishing it gives its KV back); at 40 % it is paced.
    now = 50.0
    tight = RequestState("tight", now - 1.0, 500, SLO(1.0, 0.03), computed_tokens=500, output_tokens=10,
                         first_token_s=now - 0.7)
    reqs = [ahead_decode(now), tight] + prefill_burst(now)
    policy = make_policy("fairbatching", REF_MODEL, anchor="first-token", kv_pressure=0.5)
    full = Limits(max_num_seqs=256, max_num_batched_tokens=8192, kv_blocks_free=4000, kv_blocks_total=10000)
    pressed = policy.plan(reqs, full, now)
    assert "ahead" in pressed.decode_ids and pressed.urgent_decodes == 2
    roomy = Limits(max_num_seqs=256, max_num_batched_tokens=8192, kv_blocks_free=6000, kv_blocks_total=10000)
    assert "ahead" not in policy.plan(reqs, roomy, now).decode_ids
    unknown = Limits(max_num_seqs=256, max_num_batched_tokens=8192, kv_blocks_free=4000)  # total not given
    assert "ahead" not in policy.plan(reqs, unknown, now).decode_ids
    with pytest.raises(ValueError, match="kv_pressure"):
        make_policy("fairbatching", REF_MODEL, kv_pressure=0.0)
    with pytest.raises(ValueError, match="kv_blocks_total"):
        Limits(kv_blocks_total=0)
    with pytest.raises(ValueError, match="exceeds kv_blocks_total"):
        Limits(kv_blocks_free=11, kv_blocks_total=10)


@pytest.mark.parametrize("baseline", ["vllm", "sarathi"])
def test_the_baselines_never_let_a_decode_yield(baseline):
    now = 50.0
    reqs = [ahead_decode(now)] + prefill_burst(now, n=8)
    plan = make_policy(baseline, REF_MODEL).plan(reqs, LIMITS, now)
    assert "ahead" in plan.decode_ids
    assert plan.items[0].request_id == "ahead"  # decode-first
    # a baseline judges no decode by its slack: none is tagged urgent, and none counts as urgent
    assert {i.group for i in plan.items if not i.is_prefill} == {Group.DECODE_FIRST}
    assert plan.urgent_decodes == 0


def test_under_overload_every_decode_is_urgent_and_fairbatching_degrades_to_decode_first():
    now = 50.0
    late = [RequestState(f"d{i}", now - 5, 300, SLO_DEFAULT, computed_tokens=300, output_tokens=20,
                         first_token_s=now - 4) for i in range(30)]
    plan = make_policy("fairbatching", REF_MODEL).plan(late + prefill_burst(now), LIMITS, now)
    assert plan.urgent_decodes == 30
    assert set(plan.decode_ids) == {r.request_id for r in late}
    assert plan.budget_s == pytest.approx(0.05)  # the floor: min TPOT


def test_budget_is_min_decode_slack_floored_at_min_tpot():
    now = 10.0
    d = RequestState("d", 9.0, 100, SLO(1.0, 0.05), computed_tokens=100, output_tokens=2, first_token_s=9.5)
    plan = make_policy("fairbatching", REF_MODEL).plan([d], LIMITS, now)
    assert plan.budget_s == pytest.approx(9.0 + 1.0 + 0.1 - 10.0)  # arrival anchor: slack 0.1 > tpot
    plan = make_policy("fairbatching", REF_MODEL, anchor="first-token").plan([d], LIMITS, now)
    assert plan.budget_s == pytest.approx(0.05)  # slack 9.6 - 10 < 0, floored at TPOT
    plan = make_policy("fairbatching", REF_MODEL, anchor="first-token", budget_floor=False).plan([d], LIMITS, now)
    assert plan.budget_s == 0.0  # without the floor a late decode leaves no budget: only urgent decodes run
    assert plan.decode_ids == ["d"] and plan.urgent_decodes == 1


def test_a_prefill_gets_the_largest_chunk_that_fits_the_budget():
    now = 10.0
    d = RequestState("d", 9.0, 100, SLO(1.0, 0.05), computed_tokens=100, output_tokens=10, first_token_s=9.1)
    p = RequestState("p", 9.9, 5000, SLO_DEFAULT, computed_tokens=1000)
    plan = make_policy("fairbatching", REF_MODEL, anchor="first-token").plan([d, p], LIMITS, now)
    chunk = plan.prefill_chunks["p"]
    assert chunk == REF_MODEL.largest_chunk(plan.budget_s, 1, 110, 1000)
    assert plan.predicted_s <= plan.budget_s


def test_min_chunk_refuses_slivers_but_not_the_end_of_a_prompt():
    now = 10.0
    d = RequestState("d", 9.0, 100, SLO(1.0, 0.05), computed_tokens=100, output_tokens=10, first_token_s=9.1)
    long = RequestState("long", 9.9, 5000, SLO_DEFAULT)
    tail = RequestState("tail", 9.9, 5000, SLO_DEFAULT, computed_tokens=4995)
    policy = make_policy("fairbatching", REF_MODEL, anchor="first-token", min_chunk_tokens=4000)
    plan = policy.plan([d, long, tail], LIMITS, now)
    skipped = {s.request_id: s.reason for s in plan.skipped}
    assert skipped["long"] is SkipReason.MIN_CHUNK
    assert plan.prefill_chunks["tail"] == 5


def run_stream(anchor: str, steps: int = 400) -> list[float]:
    """One decode that came early competes with an endless stream of long prompts.

    Returns the emission times of its tokens, the first one included.
    """
    slo = SLO(ttft_s=1.0, tpot_s=0.05)
    now, emitted = 0.0, [0.05]  # first token 0.95 s before its TTFT deadline
    policy = make_policy("fairbatching", REF_MODEL, anchor=anchor)
    for step in range(steps):
        decode = RequestState("d", 0.0, 200, slo, computed_tokens=200, output_tokens=len(emitted), first_token_s=emitted[0])
        burst = [RequestState(f"p{step}-{i}", now - 0.9, 4000, slo) for i in range(3)]
        plan = policy.plan([decode] + burst, LIMITS, now)
        now += plan.predicted_s
        if "d" in plan.decode_ids:
            emitted.append(now)
    return emitted


def test_first_token_anchor_keeps_mean_tpot_from_spending_early_ttft():
    arrival = run_stream("arrival")
    first = run_stream("first-token")

    def mean_tpot(times: list[float]) -> float:
        return (times[-1] - times[0]) / (len(times) - 1)

    assert mean_tpot(first) <= 0.05 * 1.001
    # The same stream under the paper's arrival anchor lets the decode drift: it
    # spends its unused 0.95 s of TTFT on later tokens.
    assert mean_tpot(arrival) > 0.05


@pytest.mark.parametrize("align", [128, 256])
def test_a_chunk_cut_by_the_budget_is_trimmed_to_a_tile_multiple_of_the_step(align):
    """With ``chunk_align_tokens`` the step's tokens become a multiple of the tile (GEMM tile
    quantization); only the chunk the budget cut short gives tokens back, and a prompt that fits
    whole is never trimmed."""
    now = 10.0
    d = RequestState("d", 9.0, 100, SLO(1.0, 0.05), computed_tokens=100, output_tokens=10, first_token_s=9.1)
    whole = RequestState("whole", 9.8, 300, SLO_DEFAULT)
    cut = RequestState("cut", 9.9, 5000, SLO_DEFAULT, computed_tokens=1000)
    plain = make_policy("fairbatching", REF_MODEL, anchor="first-token").plan([d, whole, cut], LIMITS, now)
    aligned = make_policy("fairbatching", REF_MODEL, anchor="first-token",
                          chunk_align_tokens=align).plan([d, whole, cut], LIMITS, now)
    assert plain.new_tokens % align != 0  # the budget's chunk lands off the tile (else nothing to show)
    assert aligned.new_tokens == plain.new_tokens - plain.new_tokens % align
    assert aligned.prefill_chunks["whole"] == plain.prefill_chunks["whole"] == 300
    assert aligned.prefill_chunks["cut"] == plain.prefill_chunks["cut"] - plain.new_tokens % align
    assert aligned.context_tokens == plain.context_tokens - plain.new_tokens % align
    assert aligned.predicted_s < plain.predicted_s <= plain.budget_s


def test_alignment_leaves_a_step_whose_only_chunk_would_vanish():
    """A chunk smaller than the step's excess over the tile is kept as it is (trimming it would
    give up the prefill this step), and so is a step with no chunk cut short."""
    now = 10.0
    decodes = [RequestState(f"d{i}", 9.0, 100, SLO(1.0, 0.05), computed_tokens=100, output_tokens=10,
                            first_token_s=9.1) for i in range(200)]
    tiny_budget = Limits(max_num_seqs=256, max_num_batched_tokens=210)
    cut = RequestState("cut", 9.9, 5000, SLO_DEFAULT)
    plan = make_policy("fairbatching", REF_MODEL, anchor="first-token", chunk_align_tokens=256,
                       min_chunk_tokens=1).plan([*decodes, cut], tiny_budget, now)
    assert plan.prefill_chunks["cut"] == 10 and plan.new_tokens == 210
    short = RequestState("short", 9.9, 50, SLO_DEFAULT)
    plan = make_policy("fairbatching", REF_MODEL, anchor="first-token",
                       chunk_align_tokens=256).plan([decodes[0], short], LIMITS, now)
    assert plan.prefill_chunks["short"] == 50 and plan.new_tokens == 51


def test_chunk_align_tokens_must_be_a_non_negative_integer():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="chunk_align_tokens"):
            make_policy("fairbatching", REF_MODEL, chunk_align_tokens=bad)
