import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.core.envelope import Anchor, deadline_s, on_time, on_time_both, slack_s, slacks_s, token_deadline_s
from node.core.request import SLO, RequestState


def decoding(first_token_s: float, output_tokens: int) -> RequestState:
    return RequestState("r", 10.0, 100, SLO(1.0, 0.05), computed_tokens=100, output_tokens=output_tokens, first_token_s=first_token_s)


def test_arrival_anchor_is_the_papers_envelope():
    req = decoding(first_token_s=10.2, output_tokens=3)
    assert deadline_s(req, 0) == pytest.approx(11.0)
    assert deadline_s(req, 3) == pytest.approx(10.0 + 1.0 + 0.15)


def test_first_token_anchor_moves_decode_deadlines_to_the_first_token():
    req = decoding(first_token_s=10.2, output_tokens=3)
    assert deadline_s(req, 0, Anchor.FIRST_TOKEN) == pytest.approx(11.0)  # TTFT deadline unchanged
    assert deadline_s(req, 3, Anchor.FIRST_TOKEN) == pytest.approx(10.2 + 0.15)


def test_slack_counts_tokens_emitted_and_is_negative_when_late():
    req = decoding(first_token_s=10.2, output_tokens=3)
    assert slack_s(req, 11.0) == pytest.approx(0.15)
    assert slack_s(req, 11.5) < 0


def test_envelope_is_monotonic_in_the_token_index():
    req = decoding(first_token_s=10.2, output_tokens=0)
    ds = [deadline_s(req, j) for j in range(50)]
    assert all(b > a for a, b in zip(ds, ds[1:]))
    # Under the first-token anchor decode deadlines restart at the first token,
    # which may precede the TTFT deadline; from token 1 on they rise again.
    ds = [deadline_s(req, j, Anchor.FIRST_TOKEN) for j in range(1, 50)]
    assert all(b > a for a, b in zip(ds, ds[1:]))


def test_negative_token_index_is_rejected():
    with pytest.raises(ValueError, match="token_index"):
        deadline_s(decoding(10.2, 1), -1)


def test_anchor_parses_from_its_command_line_name():
    assert Anchor("first-token") is Anchor.FIRST_TOKEN
    assert not math.isnan(slack_s(decoding(10.2, 1), 10.0, Anchor("arrival")))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0.01, 5), st.floats(0.001, 0.5), st.integers(0, 500),
                          st.one_of(st.none(), st.floats(0, 100))), min_size=1, max_size=20),
       st.floats(0, 200), st.sampled_from(list(Anchor)), st.floats(0.5, 1.0))
def test_the_planners_slacks_are_the_envelope(rows, now_s, anchor, tpot_scale):
    """``slacks_s`` (one loop for the planner) equals ``token_deadline_s`` request by request."""
    reqs = [RequestState(f"r{i}", arr, 10, SLO(ttft, tpot), computed_tokens=10, output_tokens=k,
                         first_token_s=None if k == 0 else first)
            for i, (arr, ttft, tpot, k, first) in enumerate(rows)]
    want = [token_deadline_s(r.arrival_s, r.slo.ttft_s, r.slo.tpot_s * tpot_scale, r.output_tokens,
                             r.first_token_s, anchor) - now_s for r in reqs]
    assert slacks_s(reqs, now_s, anchor, tpot_scale) == pytest.approx(want, rel=1e-12, abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 100), st.floats(0.01, 5), st.floats(0.001, 0.5), st.integers(0, 500),
       st.one_of(st.none(), st.floats(0, 100)), st.floats(0, 400))
def test_scoring_a_token_under_both_anchors_is_the_envelope(arrival, ttft, tpot, j, first, emitted):
    """``on_time_both`` (one call per emitted token) equals ``on_time`` of ``token_deadline_s`` per anchor."""
    slo = SLO(ttft, tpot)
    want = tuple(on_time(emitted, token_deadline_s(arrival, ttft, tpot, j, first, anchor))
                 for anchor in (Anchor.ARRIVAL, Anchor.FIRST_TOKEN))
    assert on_time_both(emitted, arrival, slo, j, first) == want
