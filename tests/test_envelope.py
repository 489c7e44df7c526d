import math

import pytest

from node.core.envelope import Anchor, deadline_s, slack_s
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
