"""FairBatching inside the real vLLM engine (CPU build, tiny random-weight model).

Engines run in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and are shared
per module: one stock engine, one FairBatching engine, one with a KV cache
small enough to force preemption, one on the async scheduler class. The
FairBatching engines plan with a fixed synthetic profile and no online refit,
so their decisions depend on the SLOs and the clock, not on how loaded the
machine is.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm")

from node.vllm.engine_setup import engine_scheduler, make_llm  # noqa: E402
from node.vllm.node_config import NodeConfig  # noqa: E402
from node.vllm.node_stats import NodeStats  # noqa: E402
from node.fit.profile import Profile, save_profile  # noqa: E402
from node.vllm.tiny_model import word_token_id, write_tiny_model  # noqa: E402

pytestmark = pytest.mark.engine

# Small token budget so prompts are chunked and bursts take several steps. Prefix caching is on,
# as deploy/serve.yaml has it: the same prompts run on one engine in several tests, and every
# test holds with cache hits (the scheduler plans a hit as computed).
ENGINE = dict(max_num_seqs=16, max_num_batched_tokens=128, enable_prefix_caching=True)
DEFAULT_TTFT_S, DEFAULT_TPOT_S = 1.0, 0.05


def _prompt(seed: int, length: int) -> list[int]:
    return [word_token_id((seed * 131 + i * 17) % 1000) for i in range(length)]


def _tokens_prompt(seed: int, length: int):
    from vllm.inputs import TokensPrompt

    return TokensPrompt(prompt_token_ids=_prompt(seed, length))


def _greedy(max_tokens: int, **kw):
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    write_tiny_model(root / "tiny")
    # Synthetic step-time model: 2 ms per step + 100 us per token; a 10 ms
    # budget then holds about 79 prompt tokens.
    save_profile(
        Profile(a_s=0.002, b_s_per_token=1e-4, c_s_per_context_token=0.0, safety_factor=1.0, mape=0.0,
                p99_abs_error_s=0.0, hardware="test", model="tiny", method="synthetic (tests)"),
        root / "test-profile.json",
    )
    return root


def _node_config(workdir: Path, log_name: str, **kw) -> NodeConfig:
    return NodeConfig(profile=str(workdir / "test-profile.json"), ttft_slo_s=DEFAULT_TTFT_S,
                      tpot_slo_s=DEFAULT_TPOT_S, refit=False, step_log=str(workdir / log_name), **kw)


def _close(llm) -> None:
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def stock(workdir):
    llm = make_llm(workdir / "tiny", None, **ENGINE)
    yield llm
    _close(llm)


@pytest.fixture(scope="module")
def fb(workdir):
    llm = make_llm(workdir / "tiny", _node_config(workdir, "fb.jsonl"), **ENGINE)
    yield llm
    _close(llm)


# Engines stay up until the module ends: shutting one down tears down vLLM's
# process-global parallel groups, which every in-process engine shares.
@pytest.fixture(scope="module")
def small_kv(workdir):
    llm = make_llm(workdir / "tiny", _node_config(workdir, "small-kv.jsonl"), **ENGINE,
                   num_gpu_blocks_override=12, block_size=32, max_model_len=320)
    yield llm
    _close(llm)


@pytest.fixture(scope="module")
def fb_async(workdir):
    llm = make_llm(workdir / "tiny", _node_config(workdir, "async.jsonl"), **ENGINE,
                   scheduler_cls="node.vllm.scheduler.FairBatchingAsyncScheduler")
    yield llm
    _close(llm)


def _log(workdir: Path, name: str, first_step: int = 0) -> list[dict]:
    lines = (workdir / name).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["step"] > first_step]


def _ids(outputs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outputs]


MIXED_PROMPTS = [(s, n) for s, n in enumerate((7, 40, 150, 260, 33, 90))]


def test_greedy_outputs_match_the_stock_scheduler(stock, fb):
    prompts = [_tokens_prompt(s, n) for s, n in MIXED_PROMPTS]
    want = _ids(stock.generate(prompts, _greedy(24), use_tqdm=False))
    got = _ids(fb.generate(prompts, _greedy(24), use_tqdm=False))
    assert type(engine_scheduler(fb)).__name__ == "FairBatchingScheduler"
    assert got == want


def test_per_request_slos_reach_the_policy(fb):
    engine, sched = fb.llm_engine, engine_scheduler(fb)
    engine.add_request("slo-custom", _tokens_prompt(1, 20),
                       _greedy(3, extra_args={"ttft_slo_s": 0.321, "tpot_slo_s": 0.0123}))
    engine.add_request("slo-default", _tokens_prompt(2, 20), _greedy(3))
    engine.add_request("slo-bad", _tokens_prompt(3, 20), _greedy(3, extra_args={"tpot_slo_s": -1}))
    engine.step()
    # The engine core sees the ids with a suffix vLLM appends ("slo-custom-1a2b3c4d").
    seen = {s.request_id.rsplit("-", 1)[0]: s.slo for s in sched.fb_last_snapshot}
    assert (seen["slo-custom"].ttft_s, seen["slo-custom"].tpot_s) == (0.321, 0.0123)
    assert (seen["slo-default"].ttft_s, seen["slo-default"].tpot_s) == (DEFAULT_TTFT_S, DEFAULT_TPOT_S)
    assert seen["slo-bad"].tpot_s == DEFAULT_TPOT_S
    assert sched.node_stats().invalid_slos >= 1
    while engine.has_unfinished_requests():
        engine.step()


def _burst_schedule(fb, workdir, d2_tpot_s: float) -> tuple[list[dict], str]:
    """Two decodes run (D1 tight, D2 with ``d2_tpot_s``), then a burst of prompts arrives."""
    engine, sched = fb.llm_engine, engine_scheduler(fb)
    tag = f"{d2_tpot_s:g}"
    d1, d2 = f"d1-{tag}", f"d2-{tag}"
    engine.add_request(d1, _tokens_prompt(11, 16), _greedy(400, extra_args={"tpot_slo_s": 0.01}))
    engine.add_request(d2, _tokens_prompt(12, 16), _greedy(400, extra_args={"tpot_slo_s": d2_tpot_s}))
    for _ in range(5):
        engine.step()
    start = sched.current_step
    burst = [f"p{k}-{tag}" for k in range(4)]
    for k, rid in enumerate(burst):
        engine.add_request(rid, _tokens_prompt(20 + k, 200), _greedy(1))
    done: set[str] = set()
    for _ in range(200):
        done |= {o.request_id for o in engine.step() if o.finished}
        if set(burst) <= done:
            break
    assert set(burst) <= done, "the prefill burst did not complete"
    engine.abort_request([d1, d2])
    while engine.has_unfinished_requests():
        engine.step()
    end = sched.current_step
    steps = [r for r in _log(workdir, "fb.jsonl", start) if r["step"] <= end and r["prefill_tokens"] > 0]
    core_id = next(rid for r in steps for rid in r["decoding"] if rid.startswith(d2 + "-"))
    return steps, core_id


def test_a_loose_tpot_decode_yields_steps_to_a_prefill_burst(fb, workdir):
    steps, d2 = _burst_schedule(fb, workdir, d2_tpot_s=10.0)
    yielded = [r for r in steps if d2 in r["decoding"] and d2 not in r["tokens"]]
    assert yielded, "the loose decode was scheduled in every burst step"
    assert all(d2 in r["hidden"] for r in yielded)  # left out by the plan, not by vLLM


def test_the_step_log_says_when_the_engine_went_on_so_each_steps_host_time_is_known(fb, workdir):
    """``busy_after``: work was left after the step, so the next step's start minus its own is its cadence
    (``cluster.bench.sim_vs_live.engine_steps``, the simulator check's truth)."""
    from cluster.bench.sim_vs_live import engine_steps

    before = _log(workdir, "fb.jsonl") if (workdir / "fb.jsonl").exists() else []  # the earlier tests' steps
    first = before[-1]["step"] if before else 0
    fb.generate([_tokens_prompt(s, n) for s, n in MIXED_PROMPTS], _greedy(12), use_tqdm=False)
    steps = _log(workdir, "fb.jsonl", first)
    assert len(steps) > 12
    assert [r["busy_after"] for r in steps] == [True] * (len(steps) - 1) + [False]
    timed = engine_steps(workdir, steps[0]["t"], steps[-1]["t"])
    assert sum(s.host_s is not None for s in timed) >= len(steps) - 1
    assert all(s.host_s >= 0 for s in timed if s.host_s is not None)


def test_a_tight_tpot_decode_does_not_yield(fb, workdir):
    steps, d2 = _burst_schedule(fb, workdir, d2_tpot_s=0.01)
    burst_steps = [r for r in steps if d2 in r["decoding"]]
    assert burst_steps
    assert all(d2 in r["tokens"] for r in burst_steps)


def test_stop_conditions_max_tokens_and_aborts_behave_as_stock(stock, fb):
    prompts = [_tokens_prompt(s, n) for s, n in MIXED_PROMPTS[:3]]
    ref = _ids(stock.generate(prompts, _greedy(16), use_tqdm=False))
    stop_id = ref[0][5]
    from vllm import SamplingParams

    stop = SamplingParams(temperature=0.0, max_tokens=16, stop_token_ids=[stop_id])
    want = [(o.outputs[0].finish_reason, list(o.outputs[0].token_ids)) for o in stock.generate(prompts, stop, use_tqdm=False)]
    got = [(o.outputs[0].finish_reason, list(o.outputs[0].token_ids)) for o in fb.generate(prompts, stop, use_tqdm=False)]
    assert got == want
    assert got[0][0] == "stop"

    lengths = [1, 2, 9]
    outs = fb.generate(prompts, [_greedy(n) for n in lengths], use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == lengths
    assert all(o.outputs[0].finish_reason == "length" for o in outs)

    engine, sched = fb.llm_engine, engine_scheduler(fb)
    engine.add_request("abort-me", _tokens_prompt(5, 30), _greedy(200))
    engine.add_request("keep-me", _tokens_prompt(6, 30), _greedy(12))
    finished = {}
    for i in range(100):
        if i == 4:
            engine.abort_request(["abort-me"])
        for o in engine.step():
            if o.finished:
                finished[o.request_id] = o
        if not engine.has_unfinished_requests():
            break
    assert not any(rid.startswith("abort-me") for rid in sched.requests) and "keep-me" in finished
    assert len(finished["keep-me"].outputs[0].token_ids) == 12
    assert not sched.running and not sched.waiting
    engine.step()  # an idle step after the abort must not fail


def test_plan_divergence_stays_zero_in_steady_state(fb):
    sched = engine_scheduler(fb)
    before_steps, before = sched.fb_divergent_steps, dict(sched.fb_divergence)
    prompts = [_tokens_prompt(40 + s, n) for s, n in enumerate((12, 64, 100, 180, 24, 300, 48, 75))]
    fb.generate(prompts, _greedy(20), use_tqdm=False)
    assert sched.fb_divergent_steps == before_steps, (before, dict(sched.fb_divergence))
    stats = sched.node_stats()
    assert NodeStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats  # as it crosses to the replica
    assert stats.divergent_steps == before_steps
    assert stats.step_model.b_s_per_token > 0


def test_a_prefix_cache_hit_is_planned_for_its_uncached_tokens_only(fb):
    """A prompt sharing three KV blocks with a finished one is planned from its hit: the plan
    charges only the uncached tail, vLLM schedules exactly that, and no 'prefix-cache'
    divergence is counted (before the scheduler counted the hit, the plan charged the whole
    prompt and vLLM scheduled fewer tokens)."""
    from vllm.inputs import TokensPrompt

    engine, sched = fb.llm_engine, engine_scheduler(fb)
    assert sched.kv_cache_manager.enable_caching
    shared = _prompt(90, 3 * sched.block_size)
    engine.add_request("pc-first", TokensPrompt(prompt_token_ids=shared + _prompt(91, 20)), _greedy(2))
    while engine.has_unfinished_requests():
        engine.step()
    divergent, by_reason = sched.fb_divergent_steps, dict(sched.fb_divergence)
    second = shared + _prompt(92, 40)
    engine.add_request("pc-second", TokensPrompt(prompt_token_ids=second), _greedy(2))
    engine.step()
    (state,) = sched.fb_last_snapshot
    assert (state.computed_tokens, state.prompt_tokens) == (len(shared), len(second))
    (item,) = sched.fb_last_plan.items
    assert item.new_tokens == 40
    assert sched.requests[item.request_id].num_computed_tokens == len(second)  # hit + 40 scheduled
    while engine.has_unfinished_requests():
        engine.step()
    assert (sched.fb_divergent_steps, dict(sched.fb_divergence)) == (divergent, by_reason)


def test_a_small_kv_cache_forces_preemption_and_loses_nothing(stock, small_kv, workdir):
    # 12 blocks of 32 tokens: four requests of 100 + 200 tokens cannot all fit.
    prompts = [_tokens_prompt(60 + s, 100) for s in range(4)]
    want = _ids(stock.generate(prompts, _greedy(200), use_tqdm=False))
    got = _ids(small_kv.generate(prompts, _greedy(200), use_tqdm=False))
    stats = engine_scheduler(small_kv).node_stats()
    assert [len(t) for t in got] == [200] * 4
    assert got == want
    preempted = [r for r in _log(workdir, "small-kv.jsonl") if r["preempted"]]
    assert preempted, "the small KV cache should have forced a preemption"
    assert stats.divergence_by_reason.get("preempted", 0) >= 1


def test_the_async_scheduler_variant_gives_the_same_tokens(stock, fb_async):
    prompts = [_tokens_prompt(s, n) for s, n in MIXED_PROMPTS[:4]]
    want = _ids(stock.generate(prompts, _greedy(12), use_tqdm=False))
    assert type(engine_scheduler(fb_async)).__name__ == "FairBatchingAsyncScheduler"
    got = _ids(fb_async.generate(prompts, _greedy(12), use_tqdm=False))
    assert got == want


def test_the_start_up_check_finds_every_internal_on_the_pinned_vllm_and_names_a_missing_one(fb):
    """The check runs in the scheduler's __init__ (the fixture's engine started, so it passed); on a
    copy of the real scheduler without one attribute it names that attribute and the supported vLLM."""
    import copy

    from node.vllm.internals import SUPPORTED_VLLM, VllmInternalsError, check_internals, missing_internals

    sched = engine_scheduler(fb)
    assert missing_internals(sched) == []
    gone = copy.copy(sched)
    del gone.num_waiting_for_streaming_input  # as if a vLLM release renamed it
    with pytest.raises(VllmInternalsError, match=rf"Scheduler\.num_waiting_for_streaming_input .*{SUPPORTED_VLLM}"):
        check_internals(gone, plan_applied=True)


def test_speculative_decoding_is_refused_while_the_plan_is_applied(fb):
    import copy

    from node.vllm.internals import VllmInternalsError, check_internals

    spec = copy.copy(engine_scheduler(fb))
    spec.num_spec_tokens = 3  # what vLLM sets from --speculative-config
    with pytest.raises(VllmInternalsError, match="speculative decoding"):
        check_internals(spec, plan_applied=True)
    check_internals(spec, plan_applied=False)  # observe mode plans nothing: allowed


def test_a_tight_prompt_gets_its_planned_chunk_beside_a_loose_prefill_in_progress(fb):
    """Two SLO classes on the real engine. A loose (batch) prompt is part-way through its prefill when
    a tight (interactive) prompt arrives: EDF plans the tight prompt's whole chunk first and gives the
    loose one what is left. vLLM scans running requests before waiting ones and gives each
    min(remaining, budget left), so without per-request grants the loose prefill took the whole step
    and the tight prompt got nothing (a 'more-tokens' and a 'not-scheduled' divergence); with them
    each request gets exactly its planned tokens and the tight prompt is served first."""
    engine, sched = fb.llm_engine, engine_scheduler(fb)
    loose = _greedy(2, extra_args={"ttft_slo_s": 30.0, "tpot_slo_s": 1.0})
    tight = _greedy(2, extra_args={"ttft_slo_s": 0.5, "tpot_slo_s": 0.05})
    engine.add_request("grant-batch", _tokens_prompt(301, 600), loose)
    engine.step()  # the batch prompt is now running with part of its prompt computed
    (batch_id,) = [r.request_id for r in sched.running]
    assert 0 < sched.requests[batch_id].num_computed_tokens < 600
    divergent, by_reason = sched.fb_divergent_steps, dict(sched.fb_divergence)
    engine.add_request("grant-interactive", _tokens_prompt(302, 60), tight)
    engine.step()
    plan = sched.fb_last_plan
    first = plan.items[0]
    assert first.request_id.startswith("grant-interactive") and first.new_tokens == 60
    assert any(i.request_id == batch_id for i in plan.items), "the loose prefill should share the step"
    scheduled = {i.request_id: sched.requests[i.request_id].num_computed_tokens for i in plan.items}
    assert scheduled[first.request_id] == 60  # the tight prompt's whole chunk, this step
    assert (sched.fb_divergent_steps, dict(sched.fb_divergence)) == (divergent, by_reason)
    while engine.has_unfinished_requests():
        engine.step()
