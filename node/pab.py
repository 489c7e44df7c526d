"""Prefill Admission Budget: how much more prompt work a node can take now (DESIGN section 3).

``estimate_pab`` is the closed form the balancer uses by default:

* reference step ``tau`` = min TPOT over running decodes (the budget floor);
* decode reservation per step ``T_dec = b * n_D + c * C_D``;
* prefill token rate left ``R = max(0, tau - a - T_dec) / (tau * b)``;
* queued prefill work ``W`` = remaining prompt tokens due within the horizon;
* ``PAB(H) = R * H - W``, never more than the KV headroom (free KV tokens
  minus what queued prompts and running requests will still grow into).

``estimate_pab_edf`` is the finer variant: it steps the node's EDF prefill
queue forward at the reference step, with decodes leaving as they finish and
finished prefills joining as decodes, and returns what a new request (last in
EDF order) could still prefill within the horizon.

Safety factors of the model apply. Everything is in tokens and seconds; both
functions are pure.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass
from typing import Sequence

from node.cost_model import StepTimeModel
from node.envelope import Anchor, slack_s
from node.request import RequestState


@dataclass(frozen=True, slots=True)
class PABReport:
    """A node's admission budget and the parts it is made of."""

    pab_tokens: float  # what the balancer compares against a request's prompt length
    prefill_rate_tps: float  # R: prefill tokens/s left after the decode reservation
    queued_tokens: int  # W: prompt tokens already waiting within the horizon
    kv_headroom_tokens: int  # free KV tokens after queued prompts and running growth
    reference_step_s: float  # tau
    decode_reservation_s: float  # T_dec: per-step time the running decodes take
    horizon_s: float  # H
    time_limited_tokens: float  # R * H - W before the KV cap

    def to_dict(self) -> dict:
        return asdict(self)


def _check_inputs(now_s: float, horizon_s: float, kv_free_tokens: int, default_tpot_s: float) -> None:
    if not math.isfinite(now_s):
        raise ValueError(f"now_s must be finite, got {now_s!r}")
    if not (math.isfinite(horizon_s) and horizon_s > 0):
        raise ValueError(f"horizon_s must be > 0, got {horizon_s!r}")
    if not (math.isfinite(default_tpot_s) and default_tpot_s > 0):
        raise ValueError(f"default_tpot_s must be > 0, got {default_tpot_s!r}")
    if not isinstance(kv_free_tokens, int) or kv_free_tokens < 0:
        raise ValueError(f"kv_free_tokens must be an integer >= 0, got {kv_free_tokens!r}")


def kv_headroom_tokens(requests: Sequence[RequestState], kv_free_tokens: int) -> int:
    """Free KV tokens minus what queued prompts and running requests will still need.

    A request's future outputs count only when ``max_output_tokens`` is known.
    """
    growth = 0
    for req in requests:
        growth += req.remaining_prompt_tokens
        if req.max_output_tokens is not None:
            growth += max(req.max_output_tokens - req.output_tokens, 0)
    return kv_free_tokens - growth


def _queued_within(requests: Sequence[RequestState], now_s: float, horizon_s: float, anchor: Anchor) -> int:
    return sum(
        r.remaining_prompt_tokens
        for r in requests
        if r.is_prefill and slack_s(r, now_s, anchor) <= horizon_s
    )


def estimate_pab(
    requests: Sequence[RequestState],
    model: StepTimeModel,
    now_s: float,
    *,
    horizon_s: float,
    kv_free_tokens: int,
    default_tpot_s: float,
    anchor: Anchor = Anchor.ARRIVAL,
) -> PABReport:
    """The closed-form PAB of a node holding ``requests`` (see module docstring)."""
    _check_inputs(now_s, horizon_s, kv_free_tokens, default_tpot_s)
    sf = model.safety_factor
    decodes = [r for r in requests if not r.is_prefill]
    tau = min((r.slo.tpot_s for r in decodes), default=default_tpot_s)
    n_d = len(decodes)
    c_d = sum(r.decode_context_tokens for r in decodes)
    t_dec = sf * (model.b_s_per_token * n_d + model.c_s_per_context_token * c_d)
    rate = max(0.0, tau - sf * model.a_s - t_dec) / (tau * sf * model.b_s_per_token)
    queued = _queued_within(requests, now_s, horizon_s, anchor)
    time_limited = rate * horizon_s - queued
    headroom = kv_headroom_tokens(requests, kv_free_tokens)
    return PABReport(
        pab_tokens=min(time_limited, float(headroom)),
        prefill_rate_tps=rate,
        queued_tokens=queued,
        kv_headroom_tokens=headroom,
        reference_step_s=tau,
        decode_reservation_s=t_dec,
        horizon_s=horizon_s,
        time_limited_tokens=time_limited,
    )


def estimate_pab_edf(
    requests: Sequence[RequestState],
    model: StepTimeModel,
    now_s: float,
    *,
    horizon_s: float,
    kv_free_tokens: int,
    default_tpot_s: float,
    anchor: Anchor = Anchor.ARRIVAL,
    max_steps: int = 10_000,
) -> PABReport:
    """PAB by stepping the node's EDF prefill queue forward (see module docstring).

    Each step of length ``tau`` first carries every running decode, then gives
    the rest of the step to queued prefills in EDF order (largest chunk that
    fits, context term included). A decode whose ``max_output_tokens`` is known
    leaves when it is done; a finished prefill joins the decodes. The budget is
    the prompt tokens a new request could prefill before ``now + horizon``
    after the queue; if the queue itself does not drain in time, it is minus
    the work left over.
    """
    _check_inputs(now_s, horizon_s, kv_free_tokens, default_tpot_s)
    decodes = [r for r in requests if not r.is_prefill]
    tau = min((r.slo.tpot_s for r in decodes), default=default_tpot_s)
    steps = min(max_steps, max(1, math.floor(horizon_s / tau)))

    # Running decodes as aggregates plus a heap of departure steps.
    n_d = len(decodes)
    c_d = sum(r.decode_context_tokens for r in decodes)
    departures: list[tuple[int, int]] = []  # (step at which it leaves, its context then)
    for r in decodes:
        if r.max_output_tokens is not None:
            left = max(r.max_output_tokens - r.output_tokens, 0)
            heapq.heappush(departures, (left, r.decode_context_tokens + left))

    queue = sorted(
        (r for r in requests if r.is_prefill and slack_s(r, now_s, anchor) <= horizon_s),
        key=lambda r: (slack_s(r, now_s, anchor), r.arrival_s, r.request_id),
    )
    queued_total = sum(r.remaining_prompt_tokens for r in queue)
    remaining = [r.remaining_prompt_tokens for r in queue]
    computed = [r.computed_tokens for r in queue]
    head = 0
    spare = 0  # prompt tokens a new request could prefill within the horizon
    new_computed = 0
    t_dec0 = model.safety_factor * (model.b_s_per_token * n_d + model.c_s_per_context_token * c_d)
    for step in range(steps):
        while departures and departures[0][0] <= step:
            _, ctx = heapq.heappop(departures)
            n_d -= 1
            c_d -= ctx
        batch_new, batch_ctx = n_d, c_d
        while head < len(queue):
            q = model.largest_chunk(tau, batch_new, batch_ctx, computed[head])
            q = min(q, remaining[head])
            if q <= 0:
                break
            batch_new += q
            batch_ctx += computed[head] + q
            computed[head] += q
            remaining[head] -= q
            if remaining[head] == 0:
                req = queue[head]
                n_d += 1  # it decodes from the next step on
                c_d += req.prompt_tokens
                if req.max_output_tokens is not None:
                    heapq.heappush(departures, (step + req.max_output_tokens, req.prompt_tokens + req.max_output_tokens))
                head += 1
        if head == len(queue):
            q = model.largest_chunk(tau, batch_new, batch_ctx, new_computed)
            spare += q
            new_computed += q
        c_d += n_d  # every running decode grew by one token

    leftover = sum(remaining[head:])
    time_limited = float(spare if leftover == 0 else -leftover)
    headroom = kv_headroom_tokens(requests, kv_free_tokens)
    return PABReport(
        pab_tokens=min(time_limited, float(headroom)),
        prefill_rate_tps=spare / horizon_s,
        queued_tokens=queued_total,
        kv_headroom_tokens=headroom,
        reference_step_s=tau,
        decode_reservation_s=t_dec0,
        horizon_s=horizon_s,
        time_limited_tokens=time_limited,
    )
