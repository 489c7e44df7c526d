"""The prefill-only closed-form PAB of before issue 10, kept for the simulator's ablation (``--pab-variant prefill-only``).

``node.core.pab.estimate_pab`` budgets a request's whole life (its prefill, the
decode load of every live request for the rest of its life, KV to the end,
the engine's caps). Before issue 10 it budgeted only the prefill:

* reference step ``tau`` = min TPOT over running decodes;
* decode reservation ``T_dec = b * n_D + c * C_D`` of the requests decoding
  *now*, at their context now (queued prompts and future outputs not counted);
* prefill rate ``R = max(0, tau - a - T_dec) / (tau * b)`` (a step of ``tau``
  filled with prefill, whatever ``max_num_batched_tokens`` allows);
* ``PAB = R * H - W``, capped by the KV headroom of queued prompts and of the
  outputs of requests whose ``max_output_tokens`` is known.

This is that function, unchanged except that ``a`` is the model's
``fixed_s`` (forward ``a`` plus host time, equal to ``a`` when there is no
host time), so that the ablation isolates the whole-life accounting from the
host time. It takes (and ignores) the new keyword arguments.
"""

from __future__ import annotations

from typing import Sequence

from node.core.step_time import StepTimeModel
from node.core.envelope import Anchor, slack_s
from node.core.pab import PABReport
from node.core.request import RequestState


def estimate_pab_prefill_only(
    requests: Sequence[RequestState],
    model: StepTimeModel,
    now_s: float,
    *,
    horizon_s: float,
    kv_free_tokens: int,
    default_tpot_s: float,
    anchor: Anchor = Anchor.ARRIVAL,
    **_: object,
) -> PABReport:
    sf = model.safety_factor
    decodes = [r for r in requests if not r.is_prefill]
    tau = min((r.slo.tpot_s for r in decodes), default=default_tpot_s)
    n_d = len(decodes)
    c_d = sum(r.decode_context_tokens for r in decodes)
    t_dec = sf * (model.b_s_per_token * n_d + model.c_s_per_context_token * c_d)
    rate = max(0.0, tau - sf * model.fixed_s - t_dec) / (tau * sf * model.b_s_per_token)
    queued = sum(r.remaining_prompt_tokens for r in requests
                 if r.is_prefill and slack_s(r, now_s, anchor) <= horizon_s)
    time_limited = rate * horizon_s - queued
    growth = 0
    for r in requests:
        growth += r.remaining_prompt_tokens
        if r.max_output_tokens is not None:
            growth += max(r.max_output_tokens - r.output_tokens, 0)
    headroom = kv_free_tokens - growth
    return PABReport(
        pab_tokens=min(time_limited, float(headroom)),
        prefill_rate_tps=rate,
        queued_tokens=queued,
        kv_headroom_tokens=headroom,
        reference_step_s=tau,
        decode_reservation_s=t_dec,
        horizon_s=horizon_s,
        time_limited_tokens=time_limited,
        binding="time" if time_limited <= headroom else "kv",
        recovery_tps=rate,
    )
