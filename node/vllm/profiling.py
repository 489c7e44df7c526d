"""Fit a step-time profile from a real vLLM engine (``fairbatching profile``).

The engine runs ``FairBatchingScheduler`` in observe mode (vLLM schedules as
stock; the scheduler only times steps and writes the step log), and is driven
through a grid of batches:

* prefill-only: ``k`` prompts of ``L`` tokens with ``max_tokens=1``, and long
  prompts chunked over several steps (prefill with a growing context);
* decode-only: ``n`` requests decoding together, over several prompt lengths
  (the context term);
* mixed: ``n`` running decodes plus one new prompt of ``L`` tokens.

Every measured step becomes a ``StepSample`` (with its prefill chunks' attention
pairs, from the step log); ``fit`` gives ``a, b, c`` and the prefill-attention
coefficient ``e``, and the best linear fit is kept beside it when ``e > 0``. On a
shared machine many steps are slowed by other work (measured here: a 1-token
decode step takes 2.8 ms alone and 30-400 ms beside other jobs), so
``robust_fit`` fits the lower envelope (the fastest step of each batch shape),
trims what is still far above the fit, and reports the error both on the steps
it kept and on every step measured.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from node.core.step_time import StepTimeModel

from node.fit.step_time_fit import FitReport, StepSample, robust_fit
from node.vllm.node_config import NodeConfig
from node.fit.profile import Profile


@dataclass(frozen=True)
class Grid:
    """Batch shapes the profiler drives the engine through."""

    prefill_lens: tuple[int, ...] = (16, 32, 64, 128, 256, 384, 512)
    prefill_batch: tuple[int, ...] = (1, 2, 4)
    long_prompts: tuple[int, ...] = (1024, 1536)  # chunked: prefill-only steps with context
    decode_batch: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    decode_prompts: tuple[int, ...] = (32, 256, 1024)
    decode_steps: int = 12
    mixed_decodes: tuple[int, ...] = (2, 8, 16)
    mixed_prefill_lens: tuple[int, ...] = (32, 128, 256, 448)
    repeats: int = 2


@dataclass
class ProfileRun:
    samples: list[StepSample]
    step_model: StepTimeModel
    report: FitReport  # on the kept samples
    report_all: FitReport  # on every measured sample
    dropped: int
    engine_args: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    # The best linear fit of the same steps, when step_model has a prefill-attention term (its
    # coefficients and its report on the steps it kept): the profile's ``linear_fit``.
    linear_fit: tuple[StepTimeModel, FitReport] | None = None


def read_step_log(path: str | Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def samples_from_log(records: list[dict], *, after_step: int = 0) -> list[StepSample]:
    out = []
    for r in records:
        if r["step"] <= after_step or "measured_s" not in r:
            continue
        if r["prefill_tokens"] + r["decode_tokens"] <= 0 or r["measured_s"] <= 0:
            continue
        # Step logs before the prefill-attention term have no pairs: those fit the linear model.
        out.append(StepSample(r["prefill_tokens"], r["decode_tokens"], r["context_tokens"], r["measured_s"],
                              float(r.get("prefill_attention_pairs", 0.0))))
    return out


def _prompt(rng_base: int, length: int, vocab: int) -> list[int]:
    # Word ids of the tiny tokenizer start at 3; any id below vocab works for a real model too.
    span = max(vocab - 3, 1)
    return [3 + (rng_base * 7919 + i * 104729) % span for i in range(length)]


def drive_grid(llm, grid: Grid, *, vocab: int, max_batched: int, max_seqs: int,
               progress: Callable[[str], None] | None = None) -> None:
    """Run every batch shape of ``grid`` through the in-process engine."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = llm.llm_engine
    counter = [0]

    def add(length: int, max_tokens: int) -> str:
        counter[0] += 1
        rid = f"p{counter[0]}"
        engine.add_request(
            rid,
            TokensPrompt(prompt_token_ids=_prompt(counter[0], length, vocab)),
            SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True),
        )
        return rid

    def drain(limit: int = 100_000) -> None:
        for _ in range(limit):
            if not engine.has_unfinished_requests():
                return
            engine.step()

    def note(msg: str) -> None:
        if progress:
            progress(msg)

    for rep in range(grid.repeats):
        note(f"prefill-only (round {rep + 1})")
        for length in grid.prefill_lens:
            for k in grid.prefill_batch:
                if k * length > max_batched or k > max_seqs:
                    continue
                for _ in range(k):
                    add(length, 1)
                drain()
        for length in grid.long_prompts:
            add(length, 1)
            drain()
        note(f"decode-only (round {rep + 1})")
        for prompt_len in grid.decode_prompts:
            for n in grid.decode_batch:
                if n > max_seqs:
                    continue
                for _ in range(n):
                    add(prompt_len, grid.decode_steps)
                drain()
        note(f"mixed (round {rep + 1})")
        for n in grid.mixed_decodes:
            if n + 1 > max_seqs:
                continue
            ids = [add(64, 10_000) for _ in range(n)]
            for _ in range(8):  # until every one of them decodes
                engine.step()
            for length in grid.mixed_prefill_lens:
                if length + n > max_batched:
                    continue
                add(length, 1)
                engine.step()
                engine.step()  # a decode-only step in between
            engine.abort_request(ids)
            drain()


def profile_engine(
    model_dir: str | Path,
    *,
    grid: Grid | None = None,
    safety_factor: float = 1.0,
    engine_overrides: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    step_log: str | Path | None = None,
) -> ProfileRun:
    """Start an in-process engine on ``model_dir``, drive the grid, fit the step-time model."""
    from node.vllm.engine_setup import engine_kwargs, make_llm

    grid = grid or Grid()
    overrides = dict(engine_overrides or {})
    tmp = None
    if step_log is None:
        tmp = tempfile.TemporaryDirectory(prefix="fb-profile-")
        step_log = Path(tmp.name) / "steps.jsonl"
    Path(step_log).unlink(missing_ok=True)
    # Observe mode: vLLM schedules as stock; the prior profile only sizes nothing here.
    cfg = NodeConfig(policy="vllm", apply_plan=False, refit=False, profile="ref-linear-h100", step_log=str(step_log))
    args = engine_kwargs(model_dir, **overrides)
    t0 = time.perf_counter()
    llm = make_llm(model_dir, cfg, **overrides)
    try:
        from node.vllm.engine_setup import engine_scheduler

        sched = engine_scheduler(llm)
        args["block_size"] = sched.block_size
        args["kv_cache_tokens"] = sched.cache_config.num_gpu_blocks * sched.block_size
        vocab = llm.llm_engine.model_config.get_vocab_size()
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        warm = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
        llm.generate([TokensPrompt(prompt_token_ids=_prompt(i, 64, vocab)) for i in range(4)], warm, use_tqdm=False)
        warm_steps = len(read_step_log(step_log))
        drive_grid(llm, grid, vocab=vocab, max_batched=args["max_num_batched_tokens"],
                   max_seqs=args["max_num_seqs"], progress=progress)
        records = read_step_log(step_log)
    finally:
        del llm
        if tmp is not None:
            tmp.cleanup()
    after = records[warm_steps - 1]["step"] if warm_steps else 0
    samples = samples_from_log(records, after_step=after)
    model, report, report_all, dropped = robust_fit(samples, safety_factor=safety_factor)
    linear = None
    if not model.is_linear:
        lin_model, lin_report, _, _ = robust_fit(samples, safety_factor=safety_factor, prefill_attention=False)
        linear = (lin_model, lin_report)
    return ProfileRun(samples, model, report, report_all, dropped, args, time.perf_counter() - t0, linear)


def to_profile(run: ProfileRun, *, name: str, hardware: str, model_name: str) -> Profile:
    args = run.engine_args
    return Profile.from_fit(
        run.step_model,
        run.report,
        hardware=hardware,
        model_name=model_name,
        method=(
            "fairbatching profile: real vLLM engine steps (FairBatchingScheduler in observe mode), "
            "grid of prefill-only / decode-only / mixed batches; least squares on the lower envelope "
            "(fastest step per log2 bin of prefill, decode and context tokens), trimmed at 3 MADs "
            f"({len(run.samples) - run.dropped} of {len(run.samples)} steps kept)"
        ),
        name=name,
        max_num_seqs=args.get("max_num_seqs"),
        max_num_batched_tokens=args.get("max_num_batched_tokens"),
        block_size=args.get("block_size"),
        kv_cache_tokens=args.get("kv_cache_tokens"),
        extra={
            "fit_report_all_steps": run.report_all.to_dict(),
            "steps_measured": len(run.samples),
            "steps_fitted": len(run.samples) - run.dropped,  # lower-envelope steps the fit used
            "engine": {k: v for k, v in args.items() if k not in ("model", "block_size", "kv_cache_tokens")},
            "profiling_wall_s": round(run.wall_s, 1),
            **({} if run.linear_fit is None else {"linear_fit": {
                "a_s": run.linear_fit[0].a_s, "b_s_per_token": run.linear_fit[0].b_s_per_token,
                "c_s_per_context_token": run.linear_fit[0].c_s_per_context_token,
                "mape": run.linear_fit[1].overall.mape, "p99_abs_error_s": run.linear_fit[1].overall.p99_abs_error_s,
                "fit_report": run.linear_fit[1].to_dict(),
            }}),
        },
    )
