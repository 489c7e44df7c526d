"""Per-token deadline envelope and slack (DESIGN section 2).

Token ``j`` (0-based) of a request is due at ``arr + ttft + tpot * j`` under the
paper's ``arrival`` anchor. Under the ``first-token`` anchor decode tokens are
due at ``t_first + tpot * j`` instead, so a request whose first token came early
cannot spend the unused TTFT on later tokens and break its mean-TPOT SLO.

Slack is measured against the next token to *emit* (``output_tokens``), never
against tokens merely scheduled, so serving a token early only adds slack.
"""

from __future__ import annotations

from enum import Enum

from node.request import RequestState


class Anchor(str, Enum):
    """Where decode deadlines start: the paper's arrival anchor, or the first token."""

    ARRIVAL = "arrival"
    FIRST_TOKEN = "first-token"


def deadline_s(req: RequestState, token_index: int, anchor: Anchor = Anchor.ARRIVAL) -> float:
    """Time by which token ``token_index`` (0-based) of ``req`` is due."""
    if token_index < 0:
        raise ValueError(f"token_index must be >= 0, got {token_index}")
    if token_index == 0 or anchor is Anchor.ARRIVAL or req.first_token_s is None:
        return req.arrival_s + req.slo.ttft_s + req.slo.tpot_s * token_index
    return req.first_token_s + req.slo.tpot_s * token_index


def slack_s(req: RequestState, now_s: float, anchor: Anchor = Anchor.ARRIVAL) -> float:
    """Seconds until the next token of ``req`` is due (negative when late)."""
    return deadline_s(req, req.output_tokens, anchor) - now_s
