"""Prefill Admission Budget: how much more prompt work a node can take now (DESIGN section 3).

A request admitted now will be prefilled within its TTFT, then decode one token
per step for its whole output, holding KV to the end. ``estimate_pab`` budgets
all three, in prompt tokens of one more request of the typical output length:

* reference step ``tau`` = min TPOT over every live request (the budget floor);
* **decode load of every step, whole life**: every live request, decoding now
  or queued for prefill, is counted as a decode at its average context over
  the rest of its life (context now plus half its expected remaining output):
  ``T_dec = b * n + c * C``; on a node that paces decodes to their own TPOT
  (``paced_decodes``), a request counts ``tau / TPOT`` of a decode (a batch
  decode at 250 ms beside interactive ones at 50 ms takes one step in five);
* **prefill rate from the real service rate**: a step of ``tau`` carries the
  decodes and a prefill chunk ``q = (tau - h - a - T_dec) / (b + c)``, capped by
  ``max_num_batched_tokens`` minus the decodes; the step then lasts
  ``h + a + T_dec + (b + c) * q`` (``h``: per-step host time, so this is the
  step cadence; with a prefill-attention coefficient ``e`` the chunk also pays
  its own attention, ``e * q**2 / 2``, and ``q`` is the quadratic's root,
  ``prefill_chunk_per_step``), and ``R = q / step``, never more than the prefill rate the
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

On a node that lends its decodes' slack to prefills (``lent_decode_slack``,
FairBatching's batch order), the time limit's decode reservation counts a decode
only over the part of the prefill window after its next token is due.

``PAB`` is the smallest of these; ``PABReport.binding`` names which one binds.
``recovery_tps`` says how fast the binding limit grows back when nothing new is
admitted (the balancer's Retry-After: ``(L - PAB) / recovery_tps``), and
``slot_wait_s`` how soon the next slot frees.

``estimate_pab_edf`` is the finer time-limited variant: it steps the node's EDF
prefill queue forward at the reference step, with decodes leaving as they
finish and finished prefills joining as decodes, and returns what a new request
(last in EDF order) could still prefill within the horizon.

Everything is in tokens and seconds; both functions are pure and take what
the node knows beyond its requests as keywords, the fields of ``PABInputs``.
The helpers they are built from (``running_decodes``, ``queued_prompt_tokens``,
``kv_headroom_tokens``, ``budget_report``) also serve the simulator's
prefill-only ablation (``node.core.pab_prefill_only``). Expected outputs:
a request's total output is ``min(max_output_tokens, expected_output_tokens)``
where both are known, whichever is known otherwise, 0 when neither is.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple, Sequence

from node.core.envelope import Anchor, slack_s, slacks_s
from node.core.request import RequestState
from node.core.step_time import StepTimeModel, prefill_attention_pairs
from node.core.validation import check_at_least, check_finite, check_int, check_positive

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
    idle_pab_tokens: float = 0.0  # the time-limited budget of this node were it idle (idle_pab_tokens())

    @property
    def kv_limited_tokens(self) -> float:
        """The budget's KV limit: the largest prompt whose KV, with its expected output, still fits beside
        the live requests' growth (``kv_headroom_tokens - expected_output_tokens``), tokens."""
        return self.kv_headroom_tokens - self.expected_output_tokens

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class PABInputs:
    """What a node knows when it budgets, beyond its live requests and its step-time model.

    ``estimate_pab`` and ``estimate_pab_edf`` take these as keywords (all but
    ``now_s``, their third argument); a misspelt keyword is a ``TypeError``.

    * ``now_s``: the clock, seconds; slack is measured from it.
    * ``horizon_s`` (> 0): H, seconds within which an admitted prompt must be
      prefilled (the TTFT SLO, or less to keep a margin).
    * ``kv_free_tokens`` (integer >= 0): KV cache free now, tokens.
    * ``default_tpot_s`` (> 0): the reference step when no live request sets one, seconds.
    * ``anchor``: the envelope anchor slack is taken against.
    * ``max_num_batched_tokens``, ``max_num_seqs``: the engine's caps (None: uncapped).
    * ``expected_output_tokens``: E, the output length a request is expected to
      reach (None: unknown; see ``expected_total_output``).
    * ``typical_prompt_tokens``: the prompt a new request is assumed to have
      when counting slots, tokens; a host passes the mean of the prompts it
      received (``node.core.recent.RecentMean``). None: 0, the new request's
      decode counted at its expected output alone. It is never taken from the
      live requests: then a short queued prompt would lower it and raise the
      budget, and more queued work must never raise PAB.
    * ``correction`` (> 0): the closed loop's factor ``k`` (``node.core.feedback``).
    * ``front_delay_s`` (>= 0): measured time in front of the engine, taken off H, seconds.
    * ``measured_prefill_rate_tps``: the prompt tokens per second the node
      prefilled while it had a queue; caps the modelled rate (None or < 0: no cap).
    * ``due_within_s``: the queued prompts counted are those due (first token)
      within this many seconds (None: ``horizon_s``).
    * ``paced_decodes``: the node paces each decode to its own TPOT (FairBatching):
      a request of a looser TPOT than ``tau`` is reserved ``tau / TPOT`` of a
      decode per step. False (decode-first schedulers): every decode every step.
      The closed form only (``estimate_pab``).
    * ``lent_decode_slack``: the node lends a decode's slack to prefills
      (FairBatching's batch order: prefills before decodes ahead of their
      envelope). A new prompt is prefilled in the window from the front delay
      ``d`` to the horizon ``H``; a decode whose next token is due in ``s``
      seconds (on the envelope the node paces to, ``decode_pace`` x its TPOT
      a token) needs its steps for only the part of that window after ``s``:
      the time limit reserves ``(H - max(s, d)) / (H - d)`` of it, clamped to
      [0, 1], and all of it when the window is empty. The decode and slot
      limits (the whole life) are unchanged. Only with ``paced_decodes``; the
      closed form only.
    * ``decode_pace`` (in (0, 1]): the fraction of its TPOT SLO at which the
      node plans a decode's deadlines (FairBatching's ``1 - tpot_margin``);
      the envelope ``lent_decode_slack`` measures slack against.

    Raises ``ValueError`` naming the field on a non-finite clock, a horizon or
    TPOT <= 0, KV free that is not an integer >= 0, a correction <= 0 or a
    negative front delay.
    """

    now_s: float
    horizon_s: float
    kv_free_tokens: int
    default_tpot_s: float
    anchor: Anchor = Anchor.ARRIVAL
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    expected_output_tokens: float | None = None
    typical_prompt_tokens: float | None = None
    correction: float = 1.0
    front_delay_s: float = 0.0
    measured_prefill_rate_tps: float | None = None
    due_within_s: float | None = None
    paced_decodes: bool = False
    lent_decode_slack: bool = False
    decode_pace: float = 1.0

    def __post_init__(self) -> None:
        check_finite("now_s", self.now_s)
        if self.lent_decode_slack and not self.paced_decodes:
            raise ValueError("lent_decode_slack needs paced_decodes: a decode-first node runs every decode every step")
        if not 0 < self.decode_pace <= 1:
            raise ValueError(f"decode_pace must be in (0, 1], got {self.decode_pace!r}")
        check_positive("horizon_s", self.horizon_s)
        check_positive("default_tpot_s", self.default_tpot_s)
        check_int("kv_free_tokens", self.kv_free_tokens, minimum=0)
        check_positive("correction", self.correction)
        check_at_least("front_delay_s", self.front_delay_s, 0.0)

    @property
    def effective_horizon_s(self) -> float:
        """The horizon less the front delay (never below 0), seconds."""
        return max(0.0, self.horizon_s - self.front_delay_s)

    @property
    def due_s(self) -> float:
        """Seconds within which a queued prompt's first token is due for it to count as queued work."""
        return self.horizon_s if self.due_within_s is None else self.due_within_s

    def capped_by_measured(self, tokens: float, seconds: float = 1.0) -> float:
        """``tokens`` (prefilled in ``seconds``) capped at the measured prefill rate over that time, when known."""
        measured = self.measured_prefill_rate_tps
        if measured is not None and measured >= 0:
            return min(tokens, measured * seconds)
        return tokens


class RunningDecodes(NamedTuple):
    """The requests decoding now and the step time their decodes take (``running_decodes``)."""

    requests: list[RequestState]  # the live requests past their prefill, in input order
    tau_s: float  # reference step: min TPOT over them (the default TPOT when there is none), seconds
    context_tokens: int  # C_D: the context their decodes attend to, tokens
    reservation_s: float  # T_dec = b * n_D + c * C_D with the safety factor, seconds per step


def running_decodes(requests: Sequence[RequestState], model: StepTimeModel, default_tpot_s: float) -> RunningDecodes:
    """The decodes running now, at their context now (queued prompts and future outputs not counted)."""
    decodes = [r for r in requests if not r.is_prefill]
    tau = min((r.slo.tpot_s for r in decodes), default=default_tpot_s)
    context = sum(r.decode_context_tokens for r in decodes)
    reservation = model.safety_factor * (model.b_s_per_token * len(decodes) + model.c_s_per_context_token * context)
    return RunningDecodes(decodes, tau, context, reservation)


def binding_of(limits: dict[str, float]) -> str:
    """The name of the smallest limit (the first named of equal ones); ``limits`` maps ``BINDINGS`` names to tokens."""
    return min(limits, key=limits.__getitem__)


def idle_pab_tokens(model: StepTimeModel, inputs: PABInputs) -> float:
    """The time-limited budget the node would have if it were idle now, prompt tokens.

    Steps of the default TPOT carrying prefill chunks alone (capped by
    ``max_num_batched_tokens``), at the corrected and measured-capped rate, over
    the whole horizon: ``k * R_idle * H``. The scale of a node's budget, against
    which a share can be held back for a tier (``balancer.core.placement.has_room``).
    The front delay is not taken off: it shrinks PAB under overload, and the share
    held must not shrink with it (live, a front delay near the horizon held nothing).
    """
    q, step_s = prefill_chunk_per_step(model, inputs.default_tpot_s, 0.0, 0, inputs.max_num_batched_tokens)
    rate = inputs.correction * inputs.capped_by_measured(q / step_s if q > 0 else 0.0)
    return rate * inputs.horizon_s


def budget_report(
    limits: dict[str, float], binding: str, inputs: PABInputs, model: StepTimeModel, *,
    rate_tps: float, recovery_tps: float, queued: int, headroom: int, tau_s: float, reservation_s: float,
    **parts: float,
) -> PABReport:
    """The ``PABReport`` of a budget: ``limits[binding]`` tokens, bound by ``binding``.

    ``limits`` holds at least ``time``; ``rate_tps`` and ``recovery_tps`` are
    tokens/s, ``queued`` and ``headroom`` tokens, ``tau_s`` and
    ``reservation_s`` seconds; ``parts`` are further ``PABReport`` fields.
    ``model`` gives the idle budget (``idle_pab_tokens``).
    """
    return PABReport(
        idle_pab_tokens=idle_pab_tokens(model, inputs),
        pab_tokens=limits[binding],
        prefill_rate_tps=rate_tps,
        queued_tokens=queued,
        kv_headroom_tokens=headroom,
        reference_step_s=tau_s,
        decode_reservation_s=reservation_s,
        horizon_s=inputs.horizon_s,
        time_limited_tokens=limits["time"],
        binding=binding,
        recovery_tps=recovery_tps,
        **parts,
    )


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


def queued_prompt_tokens(requests: Sequence[RequestState], now_s: float, due_s: float, anchor: Anchor) -> int:
    """Prompt tokens still to prefill of the queued requests whose first token is due within ``due_s`` seconds."""
    return sum(
        r.remaining_prompt_tokens
        for r in requests
        if r.is_prefill and slack_s(r, now_s, anchor) <= due_s
    )


def _reference_step_s(requests: Sequence[RequestState], default_tpot_s: float) -> float:
    return min((r.slo.tpot_s for r in requests), default=default_tpot_s)


class DecodeLoad(NamedTuple):
    """Every live request as a decode over the rest of its life (``_lifetime_decode_load``)."""

    n: float  # decodes per step of tau (a weighted count)
    context_tokens: float  # C: the context they attend to, tokens (weighted)
    mean_steps_left: float  # mean remaining decode steps of a live request
    horizon_n: float  # n within the horizon, a decode's lent slack taken off (== n without lending)
    horizon_context_tokens: float  # C within the horizon, likewise


def _lifetime_decode_load(
    requests: Sequence[RequestState], expected_output_tokens: float | None, tau_s: float, paced: bool,
    lend_window_s: tuple[float, float] | None = None, now_s: float = 0.0, anchor: Anchor = Anchor.ARRIVAL,
    pace: float = 1.0,
) -> DecodeLoad:
    """Every live request as a decode at its average context over the rest of its life.

    ``paced``: each request counts ``tau_s / its TPOT SLO`` of a decode per step of ``tau_s``
    (a decode paced to a looser TPOT runs in that share of the steps), so ``n`` and ``C`` are
    weighted sums; else every request decodes every step (weight 1). ``lend_window_s``: the
    window ``(start, end)``, seconds after ``now_s``, in which a new prompt is prefilled; a decode
    already running whose next token is due ``s`` seconds after ``now_s`` (on the ``anchor``'s
    envelope at ``pace`` x its TPOT a token) needs its steps only after ``s``, so it counts
    ``(end - max(s, start)) / (end - start)`` of its weight (clamped to [0, 1]; 1 for an empty
    window) in ``horizon_n`` and ``horizon_context_tokens``. Queued prompts count whole.
    """
    n, ctx, steps, n_h, ctx_h = 0.0, 0.0, 0.0, 0.0, 0.0
    lending = lend_window_s is not None and lend_window_s[1] > lend_window_s[0]
    if lending:
        start, end = lend_window_s
        slack = iter(slacks_s([r for r in requests if not r.is_prefill], now_s, anchor, pace))
    for r in requests:
        rem = _remaining_output(r, expected_output_tokens)
        w = min(1.0, tau_s / r.slo.tpot_s) if paced else 1.0
        avg_ctx = r.prompt_tokens + r.output_tokens + rem / 2
        n += w
        ctx += w * avg_ctx
        steps += rem
        share = 1.0
        if lending and not r.is_prefill:
            share = min(1.0, max(0.0, (end - max(next(slack), start)) / (end - start)))
        n_h += w * share
        ctx_h += w * share * avg_ctx
    count = len(requests)
    return DecodeLoad(n, ctx, (steps / count if count else 0.0), n_h, ctx_h)


def prefill_chunk_per_step(
    model: StepTimeModel, tau_s: float, decode_reservation_s: float, decodes: int,
    max_num_batched_tokens: int | None,
) -> tuple[float, float]:
    """``(q, step_s)``: the prefill tokens a step of ``tau_s`` carries beside its decodes, and that step's wall time.

    ``q`` fills what the step has left after the fixed cost and the decodes
    (at ``b + c`` per token, plus the chunk's own causal attention,
    ``e * q**2 / 2``, as a chunk with no computed prefix: ``StepTimeModel.chunk_for_room``),
    at most ``max_num_batched_tokens - decodes``; a capped step is shorter
    than ``tau_s``. ``q`` is 0 when the decodes alone fill the step. With a
    linear model (``e`` 0) ``q = (tau - fixed - T_dec) / (b + c)``.
    """
    sf = model.safety_factor
    fixed = sf * model.fixed_s
    per_token = sf * (model.b_s_per_token + model.c_s_per_context_token)
    if model.is_linear:
        q = max(0.0, (tau_s - fixed - decode_reservation_s) / per_token)
    else:
        q = model.chunk_for_room((tau_s - fixed - decode_reservation_s) / sf, 0)
    if max_num_batched_tokens is not None:
        q = min(q, float(max(max_num_batched_tokens - decodes, 0)))
    return q, fixed + decode_reservation_s + per_token * q + sf * model.attn_prefill_s_per_token_sq * 0.5 * q * q


def estimate_pab(requests: Sequence[RequestState], model: StepTimeModel, now_s: float, **knobs: Any) -> PABReport:
    """The closed-form, whole-life PAB of a node holding ``requests`` (see the module docstring).

    ``knobs`` are the fields of ``PABInputs`` (``horizon_s``,
    ``kv_free_tokens`` and ``default_tpot_s`` required), with their units and
    defaults. ``W`` counts the queued prompts due (first token) within
    ``due_within_s``: the ones EDF serves before a new request due then. A
    host that keeps a margin by shortening ``horizon_s`` below the TTFT SLO
    passes the SLO there, so a fresh queued prompt still counts.

    ``measured_prefill_rate_tps`` caps the modelled prefill rate (a model
    fitted on forward passes can promise more than the host delivers; what it
    delivered under load it can deliver again). ``correction`` scales the
    prefill rate and the requests the node carries at once; ``front_delay_s``
    is taken off the horizon. ``typical_prompt_tokens`` sizes a new request's
    decode for the slot count. Raises ``ValueError`` as ``PABInputs`` does,
    ``TypeError`` on an unknown knob.
    """
    inputs = PABInputs(now_s, **knobs)
    expected_output_tokens = inputs.expected_output_tokens
    sf = model.safety_factor
    fixed, b, c = sf * model.fixed_s, sf * model.b_s_per_token, sf * model.c_s_per_context_token
    tau = _reference_step_s(requests, inputs.default_tpot_s)
    effective_h = inputs.effective_horizon_s
    window = (min(inputs.front_delay_s, inputs.horizon_s), inputs.horizon_s) if inputs.lent_decode_slack else None
    load = _lifetime_decode_load(requests, expected_output_tokens, tau, inputs.paced_decodes,
                                 window, now_s, inputs.anchor, inputs.decode_pace)
    n, ctx, mean_steps_left = load.n, load.context_tokens, load.mean_steps_left
    t_dec = b * n + c * ctx
    # The prefill rate within the horizon: the decodes' reservation less the slack they lend.
    t_dec_h = b * load.horizon_n + c * load.horizon_context_tokens
    q, step_s = prefill_chunk_per_step(model, tau, t_dec_h, load.horizon_n, inputs.max_num_batched_tokens)
    rate = inputs.correction * inputs.capped_by_measured(q / step_s if q > 0 else 0.0)
    queued = queued_prompt_tokens(requests, now_s, inputs.due_s, inputs.anchor)
    time_limited = rate * effective_h - queued

    e_new = float(expected_output_tokens or 0.0)
    headroom = kv_headroom_tokens(requests, inputs.kv_free_tokens, expected_output_tokens)
    kv_limited = float(headroom) - e_new
    # A new request's decode, b + c * (L + E / 2), must fit a step beside every other decode:
    # in prompt tokens for one request (decode_limited), in requests of the typical prompt (slots).
    room = tau - fixed - t_dec
    decode_room = room - b - c * e_new / 2
    if c > 0:
        decode_limited = decode_room / c
    else:
        decode_limited = math.inf if decode_room >= 0 else -1.0
    # Not the live requests' mean prompt: a short queued prompt would lower it and raise the budget.
    typical_prompt_tokens = inputs.typical_prompt_tokens or 0.0
    per_request_s = b + c * (typical_prompt_tokens + e_new / 2)
    # k times the requests a step could carry as decodes (decodes of the live ones at their own
    # contexts, the rest at the typical one), less the live ones.
    capacity = n + room / per_request_s if room > 0 else float(n)
    slots = max(0.0, math.floor(inputs.correction * capacity - n))
    if inputs.max_num_seqs is not None:
        slots = min(slots, float(max(inputs.max_num_seqs - len(requests), 0)))
    slots_limited = math.inf if slots >= 1 else 0.0

    limits = {"time": time_limited, "kv": kv_limited, "decode": decode_limited, "slots": slots_limited}
    binding = binding_of(limits)
    # How fast the binding limit grows back with nothing new admitted: the queue drains at the
    # prefill rate; KV and decode time come back as live requests finish, spread here over their
    # mean remaining decode time at the reference step; a slot frees at the next departure.
    drain_s = mean_steps_left * tau
    idle_q, idle_step = prefill_chunk_per_step(model, tau, 0.0, 0, inputs.max_num_batched_tokens)
    if binding == "time" and rate > 0:
        recovery = rate
    elif binding == "kv":
        freed = inputs.kv_free_tokens - headroom + sum(r.held_kv_tokens for r in requests)
        recovery = freed / drain_s if drain_s > 0 else 0.0
    else:  # decode time or slots (or a time limit with no prefill rate left): back to idle as decodes end
        recovery = inputs.correction * (idle_q / idle_step) * effective_h / drain_s if drain_s > 0 else 0.0
    return budget_report(
        limits, binding, inputs, model,
        rate_tps=rate, recovery_tps=max(recovery, 0.0), queued=queued, headroom=headroom,
        tau_s=tau, reservation_s=t_dec,
        decode_limited_tokens=decode_limited,
        slots_free=slots,
        slot_wait_s=drain_s / len(requests) if requests else 0.0,
        correction=inputs.correction,
        front_delay_s=inputs.front_delay_s,
        expected_output_tokens=e_new,
    )


def estimate_pab_edf(
    requests: Sequence[RequestState], model: StepTimeModel, now_s: float, *, max_steps: int = 10_000, **knobs: Any,
) -> PABReport:
    """PAB by stepping the node's EDF prefill queue forward (see module docstring).

    Takes ``estimate_pab``'s knobs (``PABInputs``) with their meanings, and
    ``max_steps``, the most steps stepped. Each step of length ``tau`` (min TPOT
    over the running decodes) first carries every running decode, then gives
    the rest of the step (at most ``max_num_batched_tokens`` tokens, decodes
    included) to queued prefills in EDF order (largest chunk that fits,
    context term included). A decode whose output length is known
    (``expected_total_output``) leaves when it is done; a finished prefill
    joins the decodes. The queue is the prompts due within ``due_within_s``.
    The budget is the prompt tokens a new request could prefill before ``now +
    horizon - front_delay_s`` after the queue, times ``correction``, at most
    ``measured_prefill_rate_tps`` over that time; if the queue itself does not
    drain in time, it is minus the work left over. With ``max_num_seqs``
    requests already held there is no room (0). The KV headroom caps it.
    ``typical_prompt_tokens`` is not used (stepping sees every live request).
    Raises as ``estimate_pab`` does.
    """
    inputs = PABInputs(now_s, **knobs)
    expected_output_tokens = inputs.expected_output_tokens
    running = running_decodes(requests, model, inputs.default_tpot_s)
    tau = running.tau_s
    effective_h = inputs.effective_horizon_s
    steps = min(max_steps, math.floor(effective_h / tau))
    token_cap = math.inf if inputs.max_num_batched_tokens is None else inputs.max_num_batched_tokens

    # Running decodes as aggregates plus a heap of departure steps.
    n_d, c_d = len(running.requests), running.context_tokens
    departures: list[tuple[int, int]] = []  # (step at which it leaves, its context then)
    for r in running.requests:
        total = expected_total_output(r, expected_output_tokens)
        if total > 0:
            left = math.ceil(max(total - r.output_tokens, 0))
            heapq.heappush(departures, (left, r.decode_context_tokens + left))

    due_s, anchor = inputs.due_s, inputs.anchor
    queue = sorted(
        (r for r in requests if r.is_prefill and slack_s(r, now_s, anchor) <= due_s),
        key=lambda r: (slack_s(r, now_s, anchor), r.arrival_s, r.request_id),
    )
    queued_total = sum(r.remaining_prompt_tokens for r in queue)
    remaining = [r.remaining_prompt_tokens for r in queue]
    computed = [r.computed_tokens for r in queue]
    head = 0
    spare = 0  # prompt tokens a new request could prefill within the horizon
    new_computed = 0
    for step in range(steps):
        while departures and departures[0][0] <= step:
            _, ctx = heapq.heappop(departures)
            n_d -= 1
            c_d -= ctx
        batch_new, batch_ctx, batch_pairs = n_d, c_d, 0.0
        while head < len(queue):
            q = model.largest_chunk(tau, batch_new, batch_ctx, computed[head], batch_pairs)
            q = int(min(q, remaining[head], token_cap - batch_new))
            if q <= 0:
                break
            batch_new += q
            batch_ctx += computed[head] + q
            batch_pairs += prefill_attention_pairs(q, computed[head])
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
            q = int(min(model.largest_chunk(tau, batch_new, batch_ctx, new_computed, batch_pairs),
                        token_cap - batch_new))
            q = max(q, 0)
            spare += q
            new_computed += q
        c_d += n_d  # every running decode grew by one token

    leftover = sum(remaining[head:])
    offered = inputs.capped_by_measured(inputs.correction * spare, effective_h)
    if inputs.max_num_seqs is not None and len(requests) >= inputs.max_num_seqs:
        offered = 0.0
    headroom = kv_headroom_tokens(requests, inputs.kv_free_tokens, expected_output_tokens)
    limits = {"time": float(offered if leftover == 0 else -leftover), "kv": float(headroom)}
    rate = offered / effective_h if effective_h > 0 else 0.0
    return budget_report(
        limits, binding_of(limits), inputs, model, rate_tps=rate, recovery_tps=rate, queued=queued_total,
        headroom=headroom, tau_s=tau, reservation_s=running.reservation_s,
    )
