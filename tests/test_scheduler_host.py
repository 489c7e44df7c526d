"""The FairBatching scheduler built directly on vLLM's scheduler classes, without an engine.

As vLLM's own scheduler unit tests do: a ``VllmConfig`` for the tiny CPU model, a
``KVCacheConfig`` with one full-attention group, ``Request`` objects built by hand,
``schedule()`` called and each step's ``ModelRunnerOutput`` built by hand and fed to
``update_from_output()``. No model runs, so each test takes well under a second after
the import, and the order of calls is the test's to choose: the async scheduler's order
(step N+1 scheduled before step N's output arrives) runs here on CPU, where the engine
would run it synchronously.

The schedulers plan with a fixed synthetic profile (2 ms a step plus 100 us a token) and
no online refit, as the engine tests do.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm")

import torch  # noqa: E402
from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig  # noqa: E402
from vllm.sampling_params import SamplingParams, StructuredOutputsParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec  # noqa: E402
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request, RequestStatus  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

from node.fit.profile import Profile, save_profile  # noqa: E402
from node.vllm.node_config import NodeConfig  # noqa: E402
from node.vllm.scheduler import FairBatchingAsyncScheduler, FairBatchingScheduler  # noqa: E402
from node.vllm.tiny_model import word_token_id, write_tiny_model  # noqa: E402

BLOCK = 16  # KV block size, tokens
MAX_LEN = 2048  # max_model_len, tokens


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sched")
    write_tiny_model(root / "tiny")
    save_profile(
        Profile(a_s=0.002, b_s_per_token=1e-4, c_s_per_context_token=0.0, safety_factor=1.0, mape=0.0,
                p99_abs_error_s=0.0, hardware="test", model="tiny", method="synthetic (tests)"),
        root / "test-profile.json",
    )
    init_none_hash(sha256)
    return root


def _scheduler(workdir: Path, monkeypatch, cls=FairBatchingScheduler, *, num_blocks: int = 256,
               budget: int = 128, prefix_caching: bool = False, tokenizer: bool = False):
    """A FairBatching scheduler of class ``cls`` over ``num_blocks`` KV blocks (one of them vLLM's null
    block) and a token budget of ``budget`` tokens a step."""
    node = NodeConfig(profile=str(workdir / "test-profile.json"), ttft_slo_s=1.0, tpot_slo_s=0.05, refit=False)
    monkeypatch.setenv(*next(iter(node.to_env().items())))
    model = ModelConfig(model=str(workdir / "tiny"), dtype="float32", seed=0, max_model_len=MAX_LEN,
                        skip_tokenizer_init=not tokenizer)
    sched_config = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=budget, max_model_len=MAX_LEN,
                                   enable_chunked_prefill=True, async_scheduling=issubclass(cls, AsyncScheduler),
                                   is_encoder_decoder=False)
    cache = CacheConfig(block_size=BLOCK, enable_prefix_caching=prefix_caching)
    config = VllmConfig(model_config=model, scheduler_config=sched_config, cache_config=cache)
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[], kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
    cache.num_gpu_blocks = num_blocks
    return cls(vllm_config=config, kv_cache_config=kv, structured_output_manager=StructuredOutputManager(config),
               block_size=BLOCK, log_stats=True)


def _request(rid: str, prompt: int, *, seed: int = 0, max_tokens: int = 64, ttft_s: float = 1.0,
             tpot_s: float = 0.05, age_s: float = 0.0, shared: int = 0, structured: bool = False) -> Request:
    """A request with a ``prompt``-token prompt; its first ``shared`` tokens are the same for every request."""
    tokens = [word_token_id(i % 1000) for i in range(shared)]
    tokens += [word_token_id((seed * 131 + i * 17) % 1000) for i in range(prompt - shared)]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True,
                            extra_args={"ttft_slo_s": ttft_s, "tpot_slo_s": tpot_s},
                            structured_outputs=StructuredOutputsParams(regex="[a-z]+") if structured else None)
    if structured:
        params.structured_outputs._backend = "xgrammar"  # what vLLM's input processor sets
    return Request(rid, tokens, params, None, arrival_time=time.time() - age_s,
                   block_hasher=get_request_block_hasher(BLOCK, sha256))


def _output(sched, out, token: int = 7) -> ModelRunnerOutput:
    """What the model runner returns for ``out``: one sampled token for each request this step takes
    past its prompt (vLLM's ``is_prefill_chunk``, set when it scheduled), none for a prompt chunk that
    leaves more to prefill. Built right after ``schedule()``, before a later step moves the requests."""
    ids = list(out.num_scheduled_tokens)
    sampled = [[] if sched.requests[rid].is_prefill_chunk else [token] for rid in ids]
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={rid: i for i, rid in enumerate(ids)},
                             sampled_token_ids=sampled)


def _step(sched):
    """One synchronous step: schedule, then feed its output back. Returns the ``SchedulerOutput``."""
    out = sched.schedule()
    sched.update_from_output(out, _output(sched, out))
    return out


def _state(sched, rid: str):
    """``rid``'s ``RequestState`` in the last step's snapshot."""
    states = {s.request_id: s for s in sched.fb_last_snapshot}
    assert rid in states, f"{rid} is not in the snapshot"
    return states[rid]


# ---------------------------------------------------------------- prefix cache


def test_a_prefix_cache_hit_is_planned_as_computed_and_found_without_side_effects(workdir, monkeypatch):
    """A waiting request that shares 96 tokens (6 blocks) with a finished one starts at its hit:
    the plan charges only its 24 uncached tokens, vLLM schedules exactly those, and the lookup
    records no prefix-cache stats and moves no block (reference counts, free-queue order)."""
    sched = _scheduler(workdir, monkeypatch, prefix_caching=True, num_blocks=64)
    sched.add_request(_request("first", 100, seed=1, shared=96, max_tokens=1))
    while sched.has_unfinished_requests():
        _step(sched)
    second = _request("second", 120, seed=2, shared=96, max_tokens=1)
    sched.add_request(second)

    kv = sched.kv_cache_manager
    pool = kv.block_pool
    stats = (kv.prefix_cache_stats.requests, kv.prefix_cache_stats.queries, kv.prefix_cache_stats.hits)
    free_order = [b.block_id for b in pool.free_block_queue.get_all_free_blocks()]
    ref_cnts = [b.ref_cnt for b in pool.blocks]
    states, decoding = sched._fb_snapshot(time.time(), sched._fb_limits(sched.max_num_scheduled_tokens))
    (state,) = states
    assert (state.computed_tokens, state.prompt_tokens, decoding["second"]) == (96, 120, False)
    # The 6 hit blocks have no owner: they are free now and leave the free pool when adopted.
    assert state.kv_blocks_needed(24, BLOCK) == 6 + 2
    assert (kv.prefix_cache_stats.requests, kv.prefix_cache_stats.queries, kv.prefix_cache_stats.hits) == stats
    assert [b.block_id for b in pool.free_block_queue.get_all_free_blocks()] == free_order
    assert [b.ref_cnt for b in pool.blocks] == ref_cnts
    assert second.num_computed_tokens == 0 and second.status == RequestStatus.WAITING

    out = _step(sched)
    (item,) = sched.fb_last_plan.items
    assert (item.request_id, item.new_tokens) == ("second", 24)
    assert out.num_scheduled_tokens == {"second": 24}
    assert not sched.fb_divergence, dict(sched.fb_divergence)


def test_the_kv_room_check_counts_only_the_blocks_a_hit_does_not_cover(workdir, monkeypatch):
    """vLLM admits a prompt only when its whole sequence fits (``scheduler_reserve_full_isl``), counting
    the blocks its prefix-cache hit shares with a running request as already there. A 112-token prompt
    that shares 96 tokens (6 blocks) with a running request needs one new block; with two blocks of
    room it is planned (counting all 7 blocks, the snapshot would leave it out)."""
    sched = _scheduler(workdir, monkeypatch, prefix_caching=True, num_blocks=1 + 9)
    sched.add_request(_request("running", 96, seed=1, shared=96, max_tokens=100))
    _step(sched)  # its prompt: 6 blocks held, 3 free; its next token needs a 7th block
    sched.add_request(_request("sharing", 112, seed=2, shared=96, max_tokens=1))
    out = _step(sched)
    assert _state(sched, "sharing").computed_tokens == 96
    assert out.num_scheduled_tokens == {"running": 1, "sharing": 16}
    assert not sched.fb_divergence, dict(sched.fb_divergence)


# ---------------------------------------------------------------- async scheduler


def test_the_async_scheduler_plans_the_token_in_flight(workdir, monkeypatch):
    """Driven in the async order (step N+1 scheduled before step N's output is fed back), a
    decode whose previous token is still in flight is planned as a decode of one token, for the
    envelope index of the token it schedules (emitted + in flight), and is not planned once its
    last token is in flight. A plain ``Scheduler`` would schedule nothing before the output came
    back; ignoring the placeholders would plan each token against the previous one's deadline."""
    sched = _scheduler(workdir, monkeypatch, FairBatchingAsyncScheduler)
    assert isinstance(sched, AsyncScheduler)
    req = _request("a", 20, max_tokens=4)
    sched.add_request(req)

    pending = []  # (SchedulerOutput, ModelRunnerOutput) in flight, oldest first
    planned_index = []  # output_tokens of "a" in each step's snapshot
    scheduled = []
    for _ in range(8):
        out = sched.schedule()
        scheduled.append(out.num_scheduled_tokens.get("a", 0))
        if out.total_num_scheduled_tokens:
            planned_index.append(_state(sched, "a").output_tokens)
            if pending:  # a token in flight: planned as a decode of one token
                assert [(i.new_tokens, i.is_prefill) for i in sched.fb_last_plan.items] == [(1, False)]
            pending.append((out, _output(sched, out)))
        if len(pending) == 2 or (pending and not out.total_num_scheduled_tokens):
            sched.update_from_output(*pending.pop(0))  # the output of the step before this one
        if not sched.has_unfinished_requests():
            break
    # The prompt, then tokens 1, 2, 3, each scheduled while the one before it is in flight.
    assert scheduled[:4] == [20, 1, 1, 1], scheduled
    assert planned_index == [0, 1, 2, 3]
    assert req.num_output_tokens == 4 and req.is_finished()
    assert not sched.fb_divergence, dict(sched.fb_divergence)


# ---------------------------------------------------------------- structured outputs


def test_a_request_whose_grammar_is_ready_is_planned_behind_a_full_budget(workdir, monkeypatch):
    """A request waiting for its grammar (a real xgrammar regex, compiled by vLLM's manager) arrives
    first; long prompts that arrive after it keep the planned token budget full. Once the grammar
    is compiled the request is planned within two steps: vLLM's waiting scan would stop at the
    planned budget before reaching it, and its status would never leave
    WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR."""
    sched = _scheduler(workdir, monkeypatch, tokenizer=True)
    grammar = _request("g", 600, seed=3, structured=True, age_s=0.2)
    assert grammar.status == RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR
    sched.structured_output_manager.grammar_init(grammar)
    sched.add_request(grammar)
    for k in range(4):
        sched.add_request(_request(f"p{k}", 1500, seed=10 + k, age_s=0.1))
    deadline = time.time() + 60
    while not grammar.structured_output_request.is_grammar_ready:
        assert time.time() < deadline, "the grammar did not compile"
        time.sleep(0.01)

    steps = []
    for _ in range(4):
        out = _step(sched)  # the prompts' chunks fill each step's budget (no token is sampled yet)
        steps.append(dict(out.num_scheduled_tokens))
        assert sum(i.new_tokens for i in sched.fb_last_plan.items) == out.total_num_scheduled_tokens
        if "g" in out.num_scheduled_tokens:
            break
    assert "g" in steps[-1] and len(steps) <= 2, steps
    assert grammar.status == RequestStatus.RUNNING


# ---------------------------------------------------------------- preemption


def test_an_urgent_decode_short_of_kv_preempts_the_most_relaxed_hidden_decode(workdir, monkeypatch):
    """Four decodes fill the KV cache (8 blocks of 16 tokens, 2 each). The urgent one (late on its
    envelope) needs a new block for its next token; the two relaxed ones (TPOT 100 s and 1000 s)
    need one too, so the plan leaves them out (hidden); the fourth has room in its last block and is
    planned. vLLM must preempt to fit the urgent decode: the victim is the most relaxed decode,
    not the urgent decode itself, and the other relaxed decode gets no token."""
    sched = _scheduler(workdir, monkeypatch, num_blocks=1 + 8)  # vLLM keeps one null block
    # Running order (admission order) puts the less relaxed decode last: preempting the tail as it
    # stands would take the wrong one.
    sched.add_request(_request("relaxed-1000", 32, seed=1, tpot_s=1000.0))
    urgent = _request("urgent", 32, seed=2, tpot_s=0.01)
    sched.add_request(urgent)
    sched.add_request(_request("relaxed-100", 32, seed=3, tpot_s=100.0))
    sched.add_request(_request("roomy", 20, seed=4, tpot_s=0.05))
    out = _step(sched)  # the four prompts in one step; each samples its first token
    assert out.total_num_scheduled_tokens == 3 * 32 + 20
    assert all(r.num_output_tokens == 1 for r in sched.requests.values())
    assert sched.kv_cache_manager.block_pool.get_num_free_blocks() == 0
    urgent.arrival_time -= 10.0  # its envelope falls 10 s behind (a stall): its next token is late

    out = sched.schedule()
    plan = sched.fb_last_plan
    assert [(i.request_id, i.new_tokens) for i in plan.items] == [("roomy", 1)]
    assert {s.request_id for s in plan.skipped} == {"urgent", "relaxed-100", "relaxed-1000"}
    assert out.preempted_req_ids == {"relaxed-1000"}
    assert out.num_scheduled_tokens == {"roomy": 1, "urgent": 1}
    assert sched.requests["relaxed-100"].status == RequestStatus.RUNNING
    assert sched.requests["relaxed-100"] in sched.running


def test_kv_room_goes_to_the_earliest_deadline_when_seats_are_plentiful(workdir, monkeypatch):
    """16 seats, two waiting requests, KV room for one 100-token prompt: the room goes to the request due
    first (the policy's seat order), not to the one first in vLLM's FCFS queue."""
    sched = _scheduler(workdir, monkeypatch, num_blocks=1 + 8)
    sched.add_request(_request("loose", 100, seed=1, ttft_s=30.0))  # first in the queue, due in 30 s
    sched.add_request(_request("tight", 100, seed=2, ttft_s=0.5))  # due in 0.5 s
    out = _step(sched)
    assert "tight" in out.num_scheduled_tokens and "loose" not in out.num_scheduled_tokens


def test_the_seat_order_is_computed_only_when_the_waiting_requests_do_not_all_fit(workdir, monkeypatch):
    """The seat order (Moore's rule under fewest-late relegation) is host time on every step: the host
    asks for it only when seats or KV room are short, where the order decides who is admitted."""
    calls = []

    def counting(policy):
        inner = policy.seat_order
        policy.seat_order = lambda *args: calls.append(len(args[0])) or inner(*args)

    roomy = _scheduler(workdir, monkeypatch)  # 16 seats, 255 free blocks
    counting(roomy.fb_policy)
    roomy.add_request(_request("a", 100, seed=1))
    roomy.add_request(_request("b", 100, seed=2))
    out = _step(roomy)
    assert set(out.num_scheduled_tokens) == {"a", "b"} and calls == []

    short = _scheduler(workdir, monkeypatch, num_blocks=1 + 8)  # room for one 100-token prompt
    counting(short.fb_policy)
    short.add_request(_request("loose", 100, seed=1, ttft_s=30.0))
    short.add_request(_request("tight", 100, seed=2, ttft_s=5.0))
    out = _step(short)
    assert calls == [2] and "tight" in out.num_scheduled_tokens
