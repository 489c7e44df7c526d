"""Prefill Admission Budget: how much more prompt work a node can take now (DESIGN section 3).

A request admitted now will be prefilled within its TTFT, then decode one token
per step for its whole output, holding KV to the end. ``estimate_pab`` budgets
all three, in prompt tokens of one more request of the typical output length:

* reference step ``tau`` = min TPOT over every live request (the budget floor);
* **decode load of every step, whole life**: every live request, decoding now
  or queued for prefill, is counted as a decode at its average context over
  the rest of its life (context now plus half its expected remaining output):
  ``T_dec = b * n + c * C``;
* **prefill rate from the real service rate**: a step of ``tau`` carries the
  decodes and a prefill chunk ``q = (tau - h - a - T_dec) / (b + c)``, capped by
  ``max_num_batched_tokens`` minus the decodes; the step then lasts
  ``h + a + T_dec + (b + c) * q`` (``h``: per-step host time, so this is the
  step cadence), and ``R = q / step``, never more than the prefill rate the
  node was measured to deliver while it had a queue (when the host knows it);
* the node's measured ``correction`` ``k`` (closed loop, ``node.core.feedback``)
  scales what the node may take on: its prefill rate, ``k * R``, and the
  number of requests it carries at once, ``k`` times what the step could hold
  as decodes; the horizon is shortened by the measured delay in front of the
  engine: time-limited budget ``k * R * (H - front_delay) - W``, ``W`` the
  prompt tokens queued within the horizon (the fixed cost of a step is not
  scaled: however late its requests ran, an idle node still takes one);
* caps: KV headroom (free KV minus what live requests still grow into, minus
  the new request's expected output), the new request's own decode (its
  ``b + c * (L + E / 2)`` must still fit the step with all the others);
* **slots**: ``k`` times the requests of the typical prompt length a step
  could carry as decodes, less the live ones, and never more than the free
  sequence seats (``max_num_seqs``). A prompt budget alone never limits short
  prompts: each one still brings a decode for its whole output. No slot, no
  budget.

``PAB`` is the smallest of these; ``PABReport.binding`` names which one binds.
``recovery_tps`` says how fast the binding limit grows back when nothing new is
admitted (the balancer's Retry-After: ``(L - PAB) / recovery_tps``), and
``slot_wait_s`` how soon the next slot frees.

``estimate_pab_edf`` is the finer time-limited variant: it steps the node's EDF
prefill queue forward at the reference step, with decodes leaving as they
finish and finished prefills joining as decodes, and returns what a new request
(last in EDF order) could still prefill within the horizon.

Everything is in tokens and seconds; both functions are pure. Expected outputs:
a request's total output is ``min(max_output_tokens, expected_output_tokens)``
where both are known, whichever is known otherwise, 0 when neither is.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass
from typing import Sequence

from node.core.step_time import StepTimeModel
from node.core.envelope import Anchor, slack_s
from node.core.request import RequestState

#: Names of the limits a PAB can be bound by (``PABReport.binding``).
BINDINGS = ("time", "kv", "decode", "slots")


@dataclass(frozen=True, slots=True)
class PABReport:
    """A node's admission budget and the parts it is made of."""

    pab_tokens: float  # what the balancer compares against a request's prompt length
    prefill_rate_tps: float  # k * R: prefill tokens/s left after the decode reservation, corrected
    queued_tokens: int  # W: prompt tokens already waiting within the horizon
    kv_headroom_tokens: int  # free KV tokens after live requests' growth (new request's output not taken)
    reference_step_s: float  # tau
    decode_reservation_s: float  # T_dec: per-step time the live requests' decodes take
    horizon_s: float  # H, before the front delay is taken off
    time_limited_tokens: float  # correction * R * (H - front delay) - W
    decode_limited_tokens: float = math.inf  # largest prompt whose decode still fits every step
    slots_free: float = math.inf  # more requests of the typical prompt whose decodes fit (and free seats)
    slot_wait_s: float = 0.0  # expected time to the next departure (one slot back)
    correction: float = 1.0  # the closed loop's factor k on the prefill rate and the requests carried
    front_delay_s: float = 0.0  # measured time in front of the engine, taken off H
    expected_output_tokens: float = 0.0  # E: output length assumed for a new request
    binding: str = "time"  # which limit sets pab_tokens: time, kv, decode or slots
    recovery_tps: float = 0.0  # how fast the binding limit grows back with no new admission, tokens/s

    def to_dict(self) -> dict:
        return asdict(self)


def _check_inputs(now_s: float, horizon_s: float, kv_free_tokens: int, default_tpot_s: float,
                  correction: float = 1.0, front_delay_s: float = 0.0) -> None:
    if not math.isfinite(now_s):
        raise ValueError(f"now_s must be finite, got {now_s!r}")
    if not (math.isfinite(horizon_s) and horizon_s > 0):
        raise ValueError(f"horizon_s must be > 0, got {horizon_s!r}")
    if not (math.isfinite(default_tpot_s) and default_tpot_s > 0):
        raise ValueError(f"default_tpot_s must be > 0, got {default_tpot_s!r}")
    if not isinstance(kv_free_tokens, int) or kv_free_tokens < 0:
        raise ValueError(f"kv_free_tokens must be an integer >= 0, got {kv_free_tokens!r}")
    if not (math.isfinite(correction) and correction > 0):
        raise ValueError(f"correction must be > 0, got {correction!r}")
    if not (math.isfinite(front_delay_s) and front_delay_s >= 0):
        raise ValueError(f"front_delay_s must be >= 0, got {front_delay_s!r}")


def expected_total_output(req: RequestState, expected_output_tokens: float | None) -> float:
    """A request's expected total output: ``min(max_output_tokens, expected)``, whichever is known, else 0."""
    known = [v for v in (req.max_output_tokens, expected_output_tokens) if v is not None]
    return float(min(known)) if known else 0.0


def _remaining_output(req: RequestState, expected_output_tokens: float | None) -> float:
    return max(expected_total_output(req, expected_output_tokens) - req.output_tokens, 0.0)


def kv_headroom_tokens(
    requests: Sequence[RequestState], kv_free_tokens: int, expected_output_tokens: float | None = None
) -> int:
    """Free KV tokens minus what queued prompts and live requests will still need.

    A request's future outputs count as ``expected_total_output`` (nothing when
    neither its ``max_output_tokens`` nor a node-wide expectation is known).
    """
    growth = 0.0
    for req in requests:
        growth += req.remaining_prompt_tokens + _remaining_output(req, expected_output_tokens)
    return kv_free_tokens - math.ceil(growth)


def _queued_within(requests: Sequence[RequestState], now_s: float, horizon_s: float, anchor: Anchor) -> int:
    return sum(
        r.remaining_prompt_tokens
        for r in requests
        if r.is_prefill and slack_s(r, now_s, anchor) <= horizon_s
    )


def _reference_step_s(requests: Sequence[RequestState], default_tpot_s: float) -> float:
    return min((r.slo.tpot_s for r in requests), default=default_tpot_s)


def _lifetime_decode_load(
    requests: Sequence[RequestState], expected_output_tokens: float | None
) -> tuple[int, float, float]:
    """``(n, C, mean remaining decode steps)`` of every live request as a decode over the rest of its life."""
    n, ctx, steps = 0, 0.0, 0.0
    for r in requests:
        rem = _remaining_output(r, expected_output_tokens)
        n += 1
        ctx += r.prompt_tokens + r.output_tokens + rem / 2
        steps += rem
    return n, ctx, (steps / n if n else 0.0)


def prefill_chunk_per_step(
    model: StepTimeModel, tau_s: float, decode_reservation_s: float, decodes: int,
    max_num_batched_tokens: int | None,
) -> tuple[float, float]:
    """``(q, step_s)``: the prefill tokens a step of ``tau_s`` carries beside its decodes, and that step's wall time.

    ``q`` fills what the step has left after the fixed cost and the decodes
    (at ``b + c`` per token), at most ``max_num_batched_tokens - decodes``; a
    capped step is shorter than ``tau_s``. ``q`` is 0 when the decodes alone
    fill the step.
    """
    sf = model.safety_factor
    fixed = sf * model.fixed_s
    per_token = sf * (model.b_s_per_token + model.c_s_per_context_token)
    q = max(0.0, (tau_s - fixed - decode_reservation_s) / per_token)
    if max_num_batched_tokens is not None:
        q = min(q, float(max(max_num_batched_tokens - decodes, 0)))
    return q, fixed + decode_reservation_s + per_token * q


def estimate_pab(
    requests: Sequence[RequestState],
    model: StepTimeModel,
    now_s: float,
    *,
    horizon_s: float,
    kv_free_tokens: int,
    default_tpot_s: float,
    anchor: Anchor = Anchor.ARRIVAL,
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    expected_output_tokens: float | None = None,
    typical_prompt_tokens: float | None = None,
    correction: float = 1.0,
    front_delay_s: float = 0.0,
    measured_prefill_rate_tps: float | None = None,
    due_within_s: float | None = None,
) -> PABReport:
    """The closed-form, whole-life PAB of a node holding ``requests`` (see the module docstring).

    ``W`` counts the queued prompts due (first token) within ``due_within_s``
    (default: the horizon): the ones EDF serves before a new request due then.
    A host that keeps a margin by shortening ``horizon_s`` below the TTFT SLO
    passes the SLO here, so a fresh queued prompt still counts.

    ``measured_prefill_rate_tps``, when given, caps the modelled prefill rate:
    the prompt tokens per second the node actually prefilled while it had a
    queue (a model fitted on forward passes can promise more than the host
    delivers; what it delivered under load it can deliver again).

    ``correction`` (> 0) is the closed loop's measured factor ``k``: it
    scales the prefill rate and the requests the node carries at once.
    ``front_delay_s`` (>= 0) is taken off the horizon.
    ``typical_prompt_tokens`` sizes a new request's decode for the slot count
    (default: the mean prompt of ``requests``, 0 without any). Raises
    ``ValueError`` on a non-finite clock, a horizon or TPOT <= 0, negative KV,
    a correction <= 0 or a negative front delay.
    """
    _check_inputs(now_s, horizon_s, kv_free_tokens, default_tpot_s, correction, front_delay_s)
    sf = model.safety_factor
    fixed, b, c = sf * model.fixed_s, sf * model.b_s_per_token, sf * model.c_s_per_context_token
    tau = _reference_step_s(requests, default_tpot_s)
    n, ctx, mean_steps_left = _lifetime_decode_load(requests, expected_output_tokens)
    t_dec = b * n + c * ctx
    q, step_s = prefill_chunk_per_step(model, tau, t_dec, n, max_num_batched_tokens)
    modelled = q / step_s if q > 0 else 0.0
    if measured_prefill_rate_tps is not None and measured_prefill_rate_tps >= 0:
        modelled = min(modelled, measured_prefill_rate_tps)
    rate = correction * modelled
    queued = _queued_within(requests, now_s, horizon_s if due_within_s is None else due_within_s, anchor)
    effective_h = max(0.0, horizon_s - front_delay_s)
    time_limited = rate * effective_h - queued

    e_new = float(expected_output_tokens or 0.0)
    headroom = kv_headroom_tokens(requests, kv_free_tokens, expected_output_tokens)
    kv_limited = float(headroom) - e_new
    # A new request's decode, b + c * (L + E / 2), must fit a step beside every other decode:
    # in prompt tokens for one request (decode_limited), in requests of the typical prompt (slots).
    room = tau - fixed - t_dec
    decode_room = room - b - c * e_new / 2
    if c > 0:
        decode_limited = decode_room / c
    else:
        decode_limited = math.inf if decode_room >= 0 else -1.0
    if typical_prompt_tokens is None:
        typical_prompt_tokens = sum(r.prompt_tokens for r in requests) / n if n else 0.0
    per_request_s = b + c * (typical_prompt_tokens + e_new / 2)
    # k times the requests a step could carry as decodes (decodes of the live ones at their own
    # contexts, the rest at the typical one), less the live ones.
    capacity = n + room / per_request_s if room > 0 else float(n)
    slots = max(0.0, math.floor(correction * capacity - n))
    seats_free = None if max_num_seqs is None else max_num_seqs - len(requests)
    if seats_free is not None:
        slots = min(slots, float(max(seats_free, 0)))
    slots_limited = math.inf if slots >= 1 else 0.0

    limits = {"time": time_limited, "kv": kv_limited, "decode": decode_limited, "slots": slots_limited}
    binding = min(limits, key=limits.__getitem__)
    # How fast the binding limit grows back with nothing new admitted: the queue drains at the
    # prefill rate; KV and decode time come back as live requests finish, spread here over their
    # mean remaining decode time at the reference step; a slot frees at the next departure.
    drain_s = mean_steps_left * tau
    idle_q, idle_step = prefill_chunk_per_step(model, tau, 0.0, 0, max_num_batched_tokens)
    if binding == "time" and rate > 0:
        recovery = rate
    elif binding == "kv":
        freed = kv_free_tokens - headroom + sum(r.held_kv_tokens for r in requests)
        recovery = freed / drain_s if drain_s > 0 else 0.0
    else:  # decode time or slots (or a time limit with no prefill rate left): back to idle as decodes end
        recovery = correction * (idle_q / idle_step) * effective_h / drain_s if drain_s > 0 else 0.0
    return PABReport(
        pab_tokens=limits[binding],
        prefill_rate_tps=rate,
        queued_tokens=queued,
        kv_headroom_tokens=headroom,
        reference_step_s=tau,
        decode_reservation_s=t_dec,
        horizon_s=horizon_s,
        time_limited_tokens=time_limited,
        decode_limited_tokens=decode_limited,
        slots_free=slots,
        slot_wait_s=drain_s / n if n else 0.0,
        correction=correction,
        front_delay_s=front_delay_s,
        expected_output_tokens=e_new,
        binding=binding,
        recovery_tps=max(recovery, 0.0),
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
    max_num_batched_tokens: int | None = None,
    max_num_seqs: int | None = None,
    expected_output_tokens: float | None = None,
    typical_prompt_tokens: float | None = None,
    correction: float = 1.0,
    front_delay_s: float = 0.0,
    measured_prefill_rate_tps: float | None = None,
    due_within_s: float | None = None,
    max_steps: int = 10_000,
) -> PABReport:
    """PAB by stepping the node's EDF prefill queue forward (see module docstring).

    Takes ``estimate_pab``'s arguments with their meanings. Each step of length
    ``tau`` first carries every running decode, then gives the rest of the step
    (at most ``max_num_batched_tokens`` tokens, decodes included) to queued
    prefills in EDF order (largest chunk that fits, context term included). A
    decode whose output length is known (``expected_total_output``) leaves when
    it is done; a finished prefill joins the decodes. The queue is the prompts
    due within ``due_within_s`` (default: the horizon). The budget is the
    prompt tokens a new request could prefill before ``now + horizon -
    front_delay_s`` after the queue, times ``correction``, at most
    ``measured_prefill_rate_tps`` over that time; if the queue itself does not
    drain in time, it is minus the work left over. With ``max_num_seqs``
    requests already held there is no room (0). The KV headroom caps it.
    ``typical_prompt_tokens`` is not used (stepping sees every live request).
    Raises ``ValueError`` as ``estimate_pab`` does.
    """
    del typical_prompt_tokens  # the closed form's slot estimate; stepping needs none
    _check_inputs(now_s, horizon_s, kv_free_tokens, default_tpot_s, correction, front_delay_s)
    decodes = [r for r in requests if not r.is_prefill]
    tau = min((r.slo.tpot_s for r in decodes), default=default_tpot_s)
    effective_h = max(0.0, horizon_s - front_delay_s)
    steps = min(max_steps, math.floor(effective_h / tau))
    token_cap = math.inf if max_num_batched_tokens is None else max_num_batched_tokens

    # Running decodes as aggregates plus a heap of departure steps.
    n_d = len(decodes)
    c_d = sum(r.decode_context_tokens for r in decodes)
    departures: list[tuple[int, int]] = []  # (step at which it leaves, its context then)
    for r in decodes:
        total = expected_total_output(r, expected_output_tokens)
        if total > 0:
            left = math.ceil(max(total - r.output_tokens, 0))
            heapq.heappush(departures, (left, r.decode_context_tokens + left))

    queue = sorted(
        (r for r in requests if r.is_prefill
         and slack_s(r, now_s, anchor) <= (horizon_s if due_within_s is None else due_within_s)),
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
            q = int(min(q, remaining[head], token_cap - batch_new))
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
                total = expected_total_output(req, expected_output_tokens)
                if total > 0:
                    out = math.ceil(total)
                    heapq.heappush(departures, (step + out, req.prompt_tokens + out))
                head += 1
        if head == len(queue):
            q = int(min(model.largest_chunk(tau, batch_new, batch_ctx, new_computed), token_cap - batch_new))
            q = max(q, 0)
            spare += q
            new_computed += q
        c_d += n_d  # every running decode grew by one token

    leftover = sum(remaining[head:])
    offered = correction * spare
    if measured_prefill_rate_tps is not None and measured_prefill_rate_tps >= 0:
        offered = min(offered, measured_prefill_rate_tps * effective_h)
    if max_num_seqs is not None and len(requests) >= max_num_seqs:
        offered = 0.0
    time_limited = float(offered if leftover == 0 else -leftover)
    headroom = kv_headroom_tokens(requests, kv_free_tokens, expected_output_tokens)
    binding = "time" if time_limited <= headroom else "kv"
    return PABReport(
        pab_tokens=min(time_limited, float(headroom)),
        prefill_rate_tps=offered / effective_h if effective_h > 0 else 0.0,
        queued_tokens=queued_total,
        kv_headroom_tokens=headroom,
        reference_step_s=tau,
        decode_reservation_s=t_dec0,
        horizon_s=horizon_s,
        time_limited_tokens=time_limited,
        binding=binding,
        recovery_tps=offered / effective_h if effective_h > 0 else 0.0,
    )
