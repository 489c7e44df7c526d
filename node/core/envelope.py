"""Per-token deadline envelope and slack (DESIGN section 2): the only place the formula lives.

Token ``j`` (0-based) of a request is due at ``arr + ttft + tpot * j`` under the
paper's ``arrival`` anchor (FairBatching, arXiv 2510.14392, section 3). Under the
``first-token`` anchor decode tokens are due at ``t_first + tpot * j`` instead, so a
request whose first token came early cannot spend the unused TTFT on later tokens
and break its mean-TPOT SLO.

Slack is measured against the next token to *emit* (``output_tokens``), never
against tokens merely scheduled, so serving a token early only adds slack.

``token_deadline_s`` takes plain numbers so that hosts which keep their own
mutable records (the simulator, the load generator) score tokens with the same
formula the planner plans with; ``deadline_s`` and ``slack_s`` read a
``RequestState``.
"""

from __future__ import annotations

from enum import Enum
from typing import Sequence

from node.core.request import SLO, RequestState

#: Tolerance of the on-time test, seconds: a token emitted at its deadline up to
#: floating-point rounding is on time.
ON_TIME_TOLERANCE_S = 1e-9


class Anchor(str, Enum):
    """Where decode deadlines start: the paper's arrival anchor, or the first token."""

    ARRIVAL = "arrival"
    FIRST_TOKEN = "first-token"


def token_deadline_s(
    arrival_s: float,
    ttft_s: float,
    tpot_s: float,
    token_index: int,
    first_token_s: float | None = None,
    anchor: Anchor = Anchor.ARRIVAL,
) -> float:
    """Time (seconds, the arrival's clock) by which token ``token_index`` (0-based) is due.

    The first token is due ``ttft_s`` after ``arrival_s`` under both anchors; token
    ``j >= 1`` at ``arrival_s + ttft_s + tpot_s * j`` (``Anchor.ARRIVAL``, or while
    ``first_token_s`` is unknown) or ``first_token_s + tpot_s * j``
    (``Anchor.FIRST_TOKEN``). Raises ``ValueError`` for a negative index.
    """
    if token_index < 0:
        raise ValueError(f"token_index must be >= 0, got {token_index}")
    if token_index == 0 or anchor is Anchor.ARRIVAL or first_token_s is None:
        return arrival_s + ttft_s + tpot_s * token_index
    return first_token_s + tpot_s * token_index


def slacks_s(
    requests: Sequence[RequestState], now_s: float, anchor: Anchor = Anchor.ARRIVAL, tpot_scale: float = 1.0,
) -> list[float]:
    """``slack_s`` of every request, in order, with decode deadlines planned at ``tpot_scale`` x the
    TPOT SLO (a guard band below 1). The per-step form the planner calls once for all its requests:
    ``token_deadline_s`` written out in one loop (a call per request costs the planner about a tenth
    of its time); ``tests/test_envelope.py`` holds the two equal."""
    arrival_anchor = anchor is Anchor.ARRIVAL
    out = []
    for req in requests:
        slo = req.slo
        k = req.output_tokens
        if k == 0 or arrival_anchor or req.first_token_s is None:
            out.append(req.arrival_s + slo.ttft_s + slo.tpot_s * tpot_scale * k - now_s)
        else:
            out.append(req.first_token_s + slo.tpot_s * tpot_scale * k - now_s)
    return out


def on_time_both(emitted_s: float, arrival_s: float, slo: SLO, token_index: int,
                 first_token_s: float | None) -> tuple[bool, bool]:
    """Whether token ``token_index``, emitted at ``emitted_s``, met its deadline under the ``arrival``
    and under the ``first-token`` anchor, in that order (seconds, one clock). ``on_time`` of
    ``token_deadline_s`` under each anchor, written out once for the hosts that score every token
    (the simulator, the load generator); ``tests/test_envelope.py`` holds the two equal."""
    tpot_j = slo.tpot_s * token_index
    on_arrival = emitted_s <= arrival_s + slo.ttft_s + tpot_j + ON_TIME_TOLERANCE_S
    if token_index == 0 or first_token_s is None:
        return on_arrival, on_arrival
    return on_arrival, emitted_s <= first_token_s + tpot_j + ON_TIME_TOLERANCE_S


def on_time(emitted_s: float, due_s: float) -> bool:
    """Whether a token emitted at ``emitted_s`` met its deadline ``due_s`` (both seconds)."""
    return emitted_s <= due_s + ON_TIME_TOLERANCE_S


def deadline_s(req: RequestState, token_index: int, anchor: Anchor = Anchor.ARRIVAL) -> float:
    """Time by which token ``token_index`` (0-based) of ``req`` is due."""
    return token_deadline_s(req.arrival_s, req.slo.ttft_s, req.slo.tpot_s, token_index,
                            req.first_token_s, anchor)


def slack_s(req: RequestState, now_s: float, anchor: Anchor = Anchor.ARRIVAL) -> float:
    """Seconds until the next token of ``req`` is due (negative when late)."""
    return deadline_s(req, req.output_tokens, anchor) - now_s
