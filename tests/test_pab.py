"""Prefill Admission Budget: the closed form and the EDF-forward variant."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.pab import estimate_pab, estimate_pab_edf
from node.request import SLO, RequestState

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
    # tau = 0.05; T_dec = 21e-6 * 10 + 0.05e-6 * (10 * 1001); R = (0.05 - 0.0056 - T_dec) / (0.05 * 21e-6)
    t_dec = 21e-6 * 10 + 0.05e-6 * 10 * 1001
    rate = (0.05 - 0.0056 - t_dec) / (0.05 * 21e-6)
    assert r.decode_reservation_s == pytest.approx(t_dec)
    assert r.prefill_rate_tps == pytest.approx(rate)
    assert r.queued_tokens == 3000
    assert r.pab_tokens == pytest.approx(rate * 1.0 - 3000)
    assert r.kv_headroom_tokens == 400_000 - 3000


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
    assert r.pab_tokens == pytest.approx((0.05 - 0.0056) / (0.05 * 21e-6))
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
