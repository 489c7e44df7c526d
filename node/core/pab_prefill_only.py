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
host time. It is built from ``node.core.pab``'s parts: the running decodes'
load, the queued work, the KV headroom (with no node-wide output expectation)
and the report.
"""

from __future__ import annotations

from typing import Any, Sequence

from node.core.pab import (
    PABInputs, PABReport, binding_of, budget_report, kv_headroom_tokens, queued_prompt_tokens, running_decodes,
)
from node.core.request import RequestState
from node.core.step_time import StepTimeModel


def estimate_pab_prefill_only(
    requests: Sequence[RequestState], model: StepTimeModel, now_s: float, **knobs: Any,
) -> PABReport:
    """The pre-issue-10 PAB, in prompt tokens, of a node holding ``requests`` (see the module docstring).

    Takes ``estimate_pab``'s knobs (``node.core.pab.PABInputs``) and uses
    ``horizon_s`` (H, seconds, also the queue's due time), ``kv_free_tokens``,
    ``default_tpot_s`` and ``anchor``; the others (the whole-life inputs) are
    accepted and ignored. Raises ``ValueError`` and ``TypeError`` as
    ``estimate_pab`` does.
    """
    inputs = PABInputs(now_s, **knobs)
    running = running_decodes(requests, model, inputs.default_tpot_s)
    sf = model.safety_factor
    rate = max(0.0, running.tau_s - sf * model.fixed_s - running.reservation_s) / (
        running.tau_s * sf * model.b_s_per_token)
    queued = queued_prompt_tokens(requests, now_s, inputs.horizon_s, inputs.anchor)
    headroom = kv_headroom_tokens(requests, inputs.kv_free_tokens)
    limits = {"time": rate * inputs.horizon_s - queued, "kv": float(headroom)}
    return budget_report(
        limits, binding_of(limits), inputs, model, rate_tps=rate, recovery_tps=rate, queued=queued, headroom=headroom,
        tau_s=running.tau_s, reservation_s=running.reservation_s,
    )
