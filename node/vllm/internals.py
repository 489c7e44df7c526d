"""The vLLM internals the FairBatching scheduler relies on, checked once when it starts.

The scheduler subclasses vLLM's V1 ``Scheduler`` and reads state that is not a
public API: attribute names can change between vLLM releases. A renamed
attribute would otherwise fail at the first step (``AttributeError`` deep in a
step) or, where the code reads it with a default, silently plan with the
default. ``check_internals`` looks for every one of them at start-up and raises
one ``VllmInternalsError`` naming what is missing and the vLLM version this
code supports. The list is also the table in ``docs/vllm-internals.md`` (a test
keeps the two equal).

Speculative decoding is refused at start-up while the plan is applied: vLLM
spends ``1 + k`` tokens on a decode with ``k`` speculative tokens, and the
planner prices a decode at one token, so its budgets would be wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: The vLLM release this code is written and tested against (pyproject.toml pins it).
SUPPORTED_VLLM = "0.32.0"


class VllmInternalsError(RuntimeError):
    """The installed vLLM lacks something the FairBatching scheduler relies on, or is configured
    in a way the planner does not model."""


@dataclass(frozen=True)
class Internal:
    """One thing we rely on: ``owner`` (a vLLM class), its attribute ``name``, and what we use it for."""

    owner: str
    name: str
    used_for: str


#: Attributes of a running ``vllm.v1.core.sched.scheduler.Scheduler`` (set in its ``__init__``), of
#: its ``kv_cache_manager`` and of that manager's ``coordinator``.
SCHEDULER: tuple[Internal, ...] = (
    Internal("Scheduler", "running", "the running requests; hidden decodes are taken out for one schedule() call "
                                    "(moved to its tail when an urgent decode needs KV blocks)"),
    Internal("Scheduler", "waiting", "the waiting queue; planned prompts go to its head"),
    Internal("Scheduler", "requests", "every live request by id (pruning our per-request state)"),
    Internal("Scheduler", "kv_cache_manager", "free KV blocks (block_pool.get_num_free_blocks)"),
    Internal("Scheduler", "block_size", "KV block size of the plan's limits"),
    Internal("Scheduler", "max_num_running_reqs", "the sequence cap (max_num_seqs)"),
    Internal("Scheduler", "max_num_active_reqs", "narrowed to the plan's sequences for one schedule() call"),
    Internal("Scheduler", "max_num_scheduled_tokens", "narrowed to the plan's tokens for one schedule() call"),
    Internal("Scheduler", "max_model_len", "KV blocks a full-length prompt needs"),
    Internal("Scheduler", "num_waiting_for_streaming_input", "seats held by requests waiting for input"),
    Internal("Scheduler", "current_step", "the step counter of the step log"),
    Internal("Scheduler", "num_spec_tokens", "refusing speculative decoding (see the module docstring)"),
    Internal("Scheduler", "scheduler_reserve_full_isl", "whether vLLM reserves a prompt's whole KV on admission"),
    Internal("Scheduler", "_reserve_prefill_lookahead",
             "the per-request chunk cap both scans call before allocating KV: narrowed to the plan's token grant"),
    Internal("Scheduler", "prefix_replay_tokens", "the window of a prefix-cache hit vLLM recomputes (taken off the hit)"),
    Internal("KVCacheManager", "block_pool", "free KV blocks (get_num_free_blocks)"),
    Internal("KVCacheManager", "watermark_blocks", "blocks vLLM keeps free when it admits a prompt"),
    Internal("KVCacheManager", "coordinator", "the prefix-cache lookup without side effects (find_longest_cache_hit)"),
    Internal("KVCacheManager", "prefix_cache_lookup_enabled",
             "whether a request may read the prefix cache (caching on, not skip_reading_prefix_cache)"),
    Internal("KVCacheCoordinator", "find_longest_cache_hit",
             "a waiting request's prefix-cache hit (tokens, blocks), read-only: no stats, no ref_cnt or LRU change"),
)
#: Members of ``vllm.v1.request.Request`` (attributes set in ``__init__``, or properties).
REQUEST: tuple[Internal, ...] = (
    Internal("Request", "request_id", "the id plans and step logs use"),
    Internal("Request", "num_computed_tokens", "prefill progress"),
    Internal("Request", "num_prompt_tokens", "the prompt to prefill"),
    Internal("Request", "num_tokens", "prompt plus output: what a recomputed request prefills"),
    Internal("Request", "num_output_tokens", "tokens emitted, the envelope's index"),
    Internal("Request", "num_output_placeholders",
             "tokens in flight under the async scheduler: counted as emitted (the envelope's index)"),
    Internal("Request", "max_tokens", "the output cap: a decode whose last token is in flight needs nothing more"),
    Internal("Request", "block_hashes", "the prompt's block hashes, for the prefix-cache lookup"),
    Internal("Request", "structured_output_request", "whether a request waiting for its grammar has it (grammar)"),
    Internal("Request", "sampling_params", "extra_args: the request's SLO and arrival; max_tokens"),
    Internal("Request", "arrival_time", "vLLM's arrival stamp when the ingress sent none"),
    Internal("Request", "status",
             "admittable waiting requests (WAITING, PREEMPTED, WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR when compiled)"),
    Internal("Request", "is_finished", "skipping finished requests"),
)
#: Fields of ``vllm.v1.core.sched.output.SchedulerOutput`` and ``vllm.v1.metrics.stats.SchedulerStats``.
OUTPUTS: tuple[Internal, ...] = (
    Internal("SchedulerOutput", "num_scheduled_tokens", "what vLLM scheduled, per request (divergence, step log)"),
    Internal("SchedulerOutput", "total_num_scheduled_tokens", "an empty step"),
    Internal("SchedulerOutput", "preempted_req_ids", "preemptions (divergence, step log)"),
    Internal("SchedulerStats", "kv_connector_stats", "carries NodeStats to the engine replica"),
    Internal("SchedulerStats", "kv_cache_usage", "the replica's KV usage"),
)
ALL: tuple[Internal, ...] = SCHEDULER + REQUEST + OUTPUTS


def _class_members(cls: type) -> set[str]:
    """Names a class defines: its attributes and properties, and those its ``__init__`` assigns."""
    names = set(dir(cls))
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    if code is not None:
        names |= set(code.co_names)
    return names


def missing_internals(scheduler: Any) -> list[Internal]:
    """What of ``ALL`` the installed vLLM lacks; ``scheduler`` is a constructed vLLM scheduler."""
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.metrics.stats import SchedulerStats
    from vllm.v1.request import Request

    members = {"Request": _class_members(Request), "SchedulerOutput": _class_members(SchedulerOutput),
               "SchedulerStats": _class_members(SchedulerStats)}
    kv = getattr(scheduler, "kv_cache_manager", None)
    owners = {"Scheduler": scheduler, "KVCacheManager": kv, "KVCacheCoordinator": getattr(kv, "coordinator", None)}
    missing = [i for i in SCHEDULER if not hasattr(owners[i.owner], i.name)]
    missing += [i for i in REQUEST + OUTPUTS if i.name not in members[i.owner]]
    return missing


def check_internals(scheduler: Any, *, plan_applied: bool) -> None:
    """Raise ``VllmInternalsError`` when the installed vLLM lacks an internal we rely on, or when
    speculative decoding is on and the plan is applied (the planner prices a decode at one token)."""
    missing = missing_internals(scheduler)
    if missing:
        import vllm

        names = ", ".join(f"{i.owner}.{i.name} ({i.used_for})" for i in missing)
        raise VllmInternalsError(
            f"the FairBatching scheduler needs vLLM internals this vLLM ({getattr(vllm, '__version__', '?')}) "
            f"does not have: {names}. It supports vLLM {SUPPORTED_VLLM}; see docs/vllm-internals.md.")
    if plan_applied and getattr(scheduler, "num_spec_tokens", 0):
        raise VllmInternalsError(
            f"speculative decoding ({scheduler.num_spec_tokens} speculative tokens) is not supported by the "
            f"FairBatching scheduler: vLLM spends 1 + k tokens per decode and the planner prices one. Turn "
            f"speculative decoding off, or run the scheduler in observe mode (NodeConfig apply_plan: false).")


def doc_table() -> str:
    """The Markdown table of ``ALL`` in ``docs/vllm-internals.md``."""
    lines = ["| vLLM class | member | what the scheduler uses it for |", "|---|---|---|"]
    lines += [f"| `{i.owner}` | `{i.name}` | {i.used_for} |" for i in ALL]
    return "\n".join(lines) + "\n"
