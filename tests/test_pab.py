"""Prefill Admission Budget: the closed form and the EDF-forward variant."""

import math
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.core.envelope import Anchor
from node.core.pab import estimate_pab, estimate_pab_edf
from node.core.request import SLO, RequestState

from tests.conftest import NOW, REF_MODEL, models, snapshots

SLO_DEFAULT = SLO(ttft_s=1.0, tpot_s=0.05)
ESTIMATORS = [estimate_pab, estimate_pab_edf]
KW = dict(horizon_s=1.0, kv_free_tokens=400_000, default_tpot_s=0.05)


def decode(i: int, context: int = 1000, max_out: int | None = None) -> RequestState:
    return RequestState(f"d{i}", NOW - 2, context, SLO_DEFAULT, computed_tokens=context, output_tokens=1,
                        first_token_s=NOW - 1, max_output_tokens=max_out)


def queued(i: int, tokens: int) -> RequestState:
    return RequestState(f"q{i}", NOW - 0.1, tokens, SLO_DEFAULT)


def test_closed_form_matches_hand_computation():
    reqs = [decode(i) for i in range(10)] + [queued(0, 3000)]
    r = estimate_pab(reqs, REF_MODEL, NOW, **KW)
    # Whole life: the queued prompt counts as a decode too. tau = 0.05; n = 11; C = 10 * 1001 + 3000;
    # a step of tau carries q = (tau - a - T_dec) / (b + c) prompt tokens, so R = q / tau.
    t_dec = 21e-6 * 11 + 0.05e-6 * (10 * 1001 + 3000)
    rate = (0.05 - 0.0056 - t_dec) / (21.05e-6 * 0.05)
    assert r.decode_reservation_s == pytest.approx(t_dec)
    assert r.prefill_rate_tps == pytest.approx(rate)
    assert r.queued_tokens == 3000
    assert r.pab_tokens == pytest.approx(rate * 1.0 - 3000)
    assert r.kv_headroom_tokens == 400_000 - 3000
    assert r.binding == "time" and r.recovery_tps == pytest.approx(rate)


def test_a_queued_request_reserves_its_decodes_for_its_whole_life():
    """PAB counts the decode load an admitted prompt brings, not only its prefill (long outputs cost more)."""
    short = estimate_pab([queued(0, 8000)], REF_MODEL, NOW, expected_output_tokens=10, **KW)
    long = estimate_pab([queued(0, 8000)], REF_MODEL, NOW, expected_output_tokens=2000, **KW)
    assert long.decode_reservation_s > short.decode_reservation_s
    assert long.pab_tokens < short.pab_tokens
    # and its KV to the end: the headroom leaves room for the outputs it will write
    assert long.kv_headroom_tokens == 400_000 - 8000 - 2000


def test_the_prefill_rate_respects_the_batched_token_cap_and_host_time():
    model = REF_MODEL
    free = estimate_pab([], model, NOW, **KW)
    capped = estimate_pab([], model, NOW, max_num_batched_tokens=512, **KW)
    # A step carries at most 512 prompt tokens and then lasts a + (b + c) * 512, shorter than tau.
    step = 0.0056 + 21.05e-6 * 512
    assert capped.prefill_rate_tps == pytest.approx(512 / step)
    assert capped.prefill_rate_tps < free.prefill_rate_tps
    slow_host = estimate_pab([], replace(model, host_s=0.02), NOW, **KW)
    assert slow_host.prefill_rate_tps == pytest.approx((0.05 - 0.0256) / (21.05e-6 * 0.05))


def test_no_free_seat_means_no_budget():
    reqs = [decode(i) for i in range(4)]
    r = estimate_pab(reqs, REF_MODEL, NOW, max_num_seqs=4, **KW)
    assert r.pab_tokens == 0 and r.binding == "slots" and r.slots_free == 0
    r = estimate_pab(reqs, REF_MODEL, NOW, max_num_seqs=5, **KW)
    assert r.binding == "time" and r.slots_free == 1


def test_short_prompts_are_bounded_by_slots_for_their_decodes():
    """A prompt budget alone would admit tiny prompts without end; each still brings a decode."""
    slow_decode = replace(REF_MODEL, b_s_per_token=1e-3)  # 1 ms per decode per step
    reqs = [decode(i, 10) for i in range(30)]
    r = estimate_pab(reqs, slow_decode, NOW, typical_prompt_tokens=10, **KW)
    per_request = 1e-3 + 0.05e-6 * 10
    room = 0.05 - 0.0056 - (30 * 1e-3 + 0.05e-6 * 30 * 11)
    assert r.slots_free == int(room // per_request) == 14
    more = estimate_pab(reqs + [decode(i, 10) for i in range(30, 50)], slow_decode, NOW, **KW)
    assert more.slots_free == 0 and more.pab_tokens <= 0  # the decodes alone overrun the step
    assert more.slot_wait_s == 0.0  # outputs unknown: no departure to expect


def test_a_long_prompt_whose_decode_would_not_fit_the_step_is_refused():
    """With a large attention cost per context token, the new request's own decode binds."""
    attn = replace(REF_MODEL, c_s_per_context_token=2e-6)
    reqs = [decode(i, 10_000) for i in range(2)]
    r = estimate_pab(reqs, attn, NOW, expected_output_tokens=100, **KW)
    # Each running decode: context 10,001 now plus half of its 99 expected tokens left.
    room = 0.05 - 0.0056 - (21e-6 * 2 + 2e-6 * 2 * (10_001 + 49.5)) - 21e-6 - 2e-6 * 50
    assert r.decode_limited_tokens == pytest.approx(room / 2e-6)
    assert r.pab_tokens <= r.decode_limited_tokens


def test_correction_scales_the_prefill_rate_and_the_requests_carried():
    reqs = [queued(0, 100)] + [decode(i) for i in range(5)]
    base = estimate_pab(reqs, REF_MODEL, NOW, **KW)
    half = estimate_pab(reqs, REF_MODEL, NOW, correction=0.5, front_delay_s=0.2, **KW)
    assert half.prefill_rate_tps == pytest.approx(0.5 * base.prefill_rate_tps)
    assert half.time_limited_tokens == pytest.approx(half.prefill_rate_tps * 0.8 - 100)
    capacity = base.slots_free + 6  # what the step could carry, the 6 live requests included
    assert half.slots_free == math.floor(0.5 * capacity - 6)
    assert half.decode_limited_tokens == base.decode_limited_tokens  # one request's own decode: unscaled
    with pytest.raises(ValueError):
        estimate_pab([], REF_MODEL, NOW, correction=0.0, **KW)
    with pytest.raises(ValueError):
        estimate_pab([], REF_MODEL, NOW, front_delay_s=-1.0, **KW)


def test_an_idle_node_keeps_a_budget_however_low_its_correction():
    """A deep cut must not leave an idle node unable to take the request that would show it recovered."""
    r = estimate_pab([], replace(REF_MODEL, host_s=0.03), NOW, correction=0.1, typical_prompt_tokens=512, **KW)
    assert r.slots_free >= 1 and r.pab_tokens > 0


def test_a_kv_bound_node_recovers_as_its_requests_finish():
    reqs = [decode(i, 1000, max_out=101) for i in range(4)]  # 100 tokens left each: 5 s at 50 ms
    r = estimate_pab(reqs, REF_MODEL, NOW, horizon_s=5.0, kv_free_tokens=500, default_tpot_s=0.05)
    assert r.binding == "kv" and r.pab_tokens == 500 - 400
    # They hold 4 * 1000 KV tokens and will grow by 400 more, all freed over their 5 s of decoding.
    assert r.recovery_tps == pytest.approx((4 * 1000 + 400) / 5.0)


@pytest.mark.parametrize("estimate", ESTIMATORS)
def test_pab_falls_as_queued_work_rises(estimate):
    base = [decode(i) for i in range(20)]
    values = [estimate(base + [queued(j, 2000) for j in range(k)], REF_MODEL, NOW, **KW).pab_tokens for k in range(6)]
    assert all(b < a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("estimate", ESTIMATORS)
def test_pab_falls_as_decode_load_rises(estimate):
    values = [estimate([decode(i, 2000) for i in range(n)] + [queued(0, 1000)], REF_MODEL, NOW, **KW).pab_tokens
              for n in (0, 16, 64, 256)]
    assert all(b < a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("estimate", ESTIMATORS)
def test_pab_never_exceeds_kv_headroom(estimate):
    reqs = [decode(i, 1000, max_out=500) for i in range(4)]
    r = estimate(reqs, REF_MODEL, NOW, horizon_s=5.0, kv_free_tokens=3000, default_tpot_s=0.05)
    assert r.kv_headroom_tokens == 3000 - 4 * 499
    assert r.pab_tokens == r.kv_headroom_tokens


def test_an_idle_node_offers_what_it_prefills_within_the_horizon():
    r = estimate_pab([], REF_MODEL, NOW, **KW)
    assert r.pab_tokens == pytest.approx((0.05 - 0.0056) / (0.05 * 21.05e-6))
    fine = estimate_pab_edf([], REF_MODEL, NOW, **KW)
    # stepping forward pays the context term the closed form leaves out, so it offers a little less
    assert 0.8 * r.pab_tokens < fine.pab_tokens <= r.pab_tokens


def test_edf_variant_sees_decodes_leave_and_an_overdue_queue():
    leaving = [decode(i, 1000, max_out=3) for i in range(200)]
    staying = [decode(i, 1000) for i in range(200)]
    assert estimate_pab_edf(leaving, REF_MODEL, NOW, **KW).pab_tokens > estimate_pab_edf(staying, REF_MODEL, NOW, **KW).pab_tokens
    swamped = estimate_pab_edf([queued(i, 8000) for i in range(20)], REF_MODEL, NOW, **KW)
    assert swamped.pab_tokens < 0


@given(model=models, reqs=snapshots(max_size=30), extra=st.integers(1, 5000))
def test_more_queued_work_never_raises_pab(model, reqs, extra):
    more = reqs + [RequestState("new", NOW, extra, SLO_DEFAULT)]
    for estimate in ESTIMATORS:
        before = estimate(reqs, model, NOW, **KW)
        after = estimate(more, model, NOW, **KW)
        assert after.pab_tokens <= before.pab_tokens + 1e-6
        assert after.pab_tokens <= after.kv_headroom_tokens


def test_a_shortened_horizon_still_counts_every_queued_prompt_due_within_the_slo():
    """A margin on the horizon must not hide fresh prompts (due a full TTFT away) from W (seen live)."""
    fresh = [RequestState(f"q{i}", NOW, 512, SLO_DEFAULT) for i in range(4)]  # due at NOW + 1 s
    short = estimate_pab(fresh, REF_MODEL, NOW, horizon_s=0.6, kv_free_tokens=400_000, default_tpot_s=0.05)
    assert short.queued_tokens == 0  # due after the short horizon: not counted
    kept = estimate_pab(fresh, REF_MODEL, NOW, horizon_s=0.6, due_within_s=1.0, kv_free_tokens=400_000,
                        default_tpot_s=0.05)
    assert kept.queued_tokens == 4 * 512
    assert kept.pab_tokens == pytest.approx(short.pab_tokens - 4 * 512)


def test_edf_variant_takes_the_closed_forms_knowledge_and_caps():
    base = estimate_pab_edf([], REF_MODEL, NOW, **KW).pab_tokens
    assert base > 0
    # the closed loop's correction scales what is offered; the front delay shortens the horizon
    assert estimate_pab_edf([], REF_MODEL, NOW, correction=0.5, **KW).pab_tokens == pytest.approx(base / 2, rel=0.01)
    assert estimate_pab_edf([], REF_MODEL, NOW, front_delay_s=0.5, **KW).pab_tokens < 0.6 * base
    # a step carries at most max_num_batched_tokens tokens: 20 steps of 0.05 s in the 1 s horizon
    assert estimate_pab_edf([], REF_MODEL, NOW, max_num_batched_tokens=256, **KW).pab_tokens == 20 * 256
    # what the node measured it can prefill caps the model's promise
    assert estimate_pab_edf([], REF_MODEL, NOW, measured_prefill_rate_tps=1000.0, **KW).pab_tokens == pytest.approx(1000.0)
    # no seat left: no room, whatever the time says
    full = [decode(i, 100) for i in range(4)]
    assert estimate_pab_edf(full, REF_MODEL, NOW, max_num_seqs=4, **KW).pab_tokens == 0
    with pytest.raises(TypeError):
        estimate_pab_edf([], REF_MODEL, NOW, corection=0.5, **KW)  # a misspelt knob is an error, not ignored
    with pytest.raises(ValueError):
        estimate_pab_edf([], REF_MODEL, NOW, correction=0.0, **KW)


def test_recent_mean_keeps_only_its_window():
    from node.core.recent import RecentMean

    m = RecentMean(3)
    assert m.mean() is None
    for v in (10, 20, 30, 40):
        m.add(v)
    assert len(m) == 3 and m.mean() == pytest.approx(30.0)
    with pytest.raises(ValueError):
        RecentMean(0)


def test_a_short_queued_prompt_does_not_open_slots():
    """The case that broke monotonicity: one long decode fills the step; a 1-token prompt must not make room."""
    long = RequestState("r0", NOW - 1, 3483, SLO(ttft_s=0.2, tpot_s=0.02), computed_tokens=3483, output_tokens=2,
                        first_token_s=NOW - 0.5)
    model = replace(REF_MODEL, a_s=0.0137, b_s_per_token=2.53e-5, c_s_per_context_token=9.0e-7)
    before = estimate_pab([long], model, NOW, **KW)
    after = estimate_pab([long, queued(0, 1)], model, NOW, **KW)
    assert after.pab_tokens <= before.pab_tokens


def test_paced_decodes_reserve_their_share_of_steps():
    """A decode paced to 250 ms beside a 50 ms one takes one step in five (paced_decodes), not every step."""
    batch = SLO(ttft_s=30.0, tpot_s=0.25)
    reqs = [decode(0)] + [RequestState(f"b{i}", NOW - 2, 1000, batch, computed_tokens=1000, output_tokens=1,
                                       first_token_s=NOW - 1) for i in range(40)]
    every = estimate_pab(reqs, REF_MODEL, NOW, **KW)
    paced = estimate_pab(reqs, REF_MODEL, NOW, paced_decodes=True, **KW)
    assert paced.decode_reservation_s == pytest.approx(every.decode_reservation_s * (1 + 40 * 0.2) / 41)
    assert paced.pab_tokens > every.pab_tokens
    # one SLO: pacing changes nothing
    same = [decode(i) for i in range(10)]
    assert estimate_pab(same, REF_MODEL, NOW, paced_decodes=True, **KW) == estimate_pab(same, REF_MODEL, NOW, **KW)


def test_decodes_ahead_of_their_envelope_lend_their_slack_to_the_time_limit():
    """A FairBatching node serves prefills before decodes ahead of their envelope: within the horizon a
    decode whose next token is due in s seconds needs its steps for only H - s (lent_decode_slack)."""
    def ahead(i: int, out: int) -> RequestState:  # first token 0.1 s ago; token `out` due at NOW - 0.1 + out * TPOT
        return RequestState(f"a{i}", NOW - 0.5, 1000, SLO_DEFAULT, computed_tokens=1000, output_tokens=out,
                            first_token_s=NOW - 0.1)
    kw = dict(KW, paced_decodes=True, anchor=Anchor.FIRST_TOKEN)
    reqs = [ahead(i, 20) for i in range(30)]  # slack 0.9 s of a 1 s horizon: 10 % of their steps
    plain = estimate_pab(reqs, REF_MODEL, NOW, **kw)
    lent = estimate_pab(reqs, REF_MODEL, NOW, lent_decode_slack=True, **kw)
    t_dec_h = 0.1 * (21e-6 * 30 + 0.05e-6 * 30 * 1020)
    assert lent.prefill_rate_tps == pytest.approx((0.05 - 0.0056 - t_dec_h) / (21.05e-6 * 0.05))
    assert lent.time_limited_tokens > plain.time_limited_tokens
    # the whole-life limits are the decodes' own: unchanged
    assert lent.decode_reservation_s == plain.decode_reservation_s
    assert lent.decode_limited_tokens == plain.decode_limited_tokens and lent.slots_free == plain.slots_free
    # decodes due now (or late) lend nothing
    due = [ahead(i, 2) for i in range(30)]
    assert estimate_pab(due, REF_MODEL, NOW, lent_decode_slack=True, **kw) == estimate_pab(due, REF_MODEL, NOW, **kw)
    # a decode-first node runs every decode every step: it has no slack to lend
    with pytest.raises(ValueError, match="lent_decode_slack needs paced_decodes"):
        estimate_pab(reqs, REF_MODEL, NOW, lent_decode_slack=True, **KW)


def test_lent_slack_is_measured_on_the_nodes_own_pace_and_within_the_prefill_window():
    """Slack is what the node lends: against the deadlines it plans (decode_pace x TPOT a token), and
    only over the window a new prompt is prefilled in, from the front delay to the horizon."""
    def ahead(i: int) -> RequestState:  # 20 tokens in 0.1 s: due at NOW + 0.9 at 50 ms a token, NOW + 0.7 at 40 ms
        return RequestState(f"a{i}", NOW - 0.5, 1000, SLO_DEFAULT, computed_tokens=1000, output_tokens=20,
                            first_token_s=NOW - 0.1)
    reqs = [ahead(i) for i in range(30)]
    kw = dict(KW, paced_decodes=True, anchor=Anchor.FIRST_TOKEN, lent_decode_slack=True)

    def rate_with_share(share: float) -> float:
        t_dec_h = share * (21e-6 * 30 + 0.05e-6 * 30 * 1020)
        return (0.05 - 0.0056 - t_dec_h) / (21.05e-6 * 0.05)

    assert estimate_pab(reqs, REF_MODEL, NOW, **kw).prefill_rate_tps == pytest.approx(rate_with_share(0.1))
    # planned at 0.8 x TPOT (tpot_margin 0.2), the next token is due in 0.7 s: 30 % of the window
    paced = estimate_pab(reqs, REF_MODEL, NOW, decode_pace=0.8, **kw)
    assert paced.prefill_rate_tps == pytest.approx(rate_with_share(0.3))
    # a front delay of 0.5 s: the prompt is prefilled in [0.5, 1] s, the decodes need (1 - 0.9) / 0.5 of it
    delayed = estimate_pab(reqs, REF_MODEL, NOW, front_delay_s=0.5, **kw)
    assert delayed.prefill_rate_tps == pytest.approx(rate_with_share(0.2))
    # the window gone (front delay past the horizon): nothing is lent
    gone = estimate_pab(reqs, REF_MODEL, NOW, front_delay_s=1.5, **kw)
    assert gone.prefill_rate_tps == pytest.approx(rate_with_share(1.0))
    with pytest.raises(ValueError, match="decode_pace"):
        estimate_pab(reqs, REF_MODEL, NOW, decode_pace=0.0, **kw)


def test_the_idle_budget_is_the_scale_of_an_idle_node_whatever_the_front_delay():
    """The share held for a tier is of what an idle node takes over the whole horizon: a front delay that
    eats the horizon under overload shrinks PAB, not what is held back (live: it held nothing)."""
    idle = estimate_pab([], REF_MODEL, NOW, **KW)
    delayed = estimate_pab([], REF_MODEL, NOW, front_delay_s=0.9, **KW)
    assert idle.idle_pab_tokens > 0 and idle.idle_pab_tokens == pytest.approx(idle.pab_tokens)
    assert delayed.idle_pab_tokens == pytest.approx(idle.idle_pab_tokens)
    assert delayed.pab_tokens < 0.2 * idle.pab_tokens
    slow = estimate_pab([], REF_MODEL, NOW, measured_prefill_rate_tps=1000.0, correction=0.5, **KW)
    assert slow.idle_pab_tokens == pytest.approx(0.5 * 1000.0 * KW["horizon_s"])
