"""Building a real vLLM engine for this project: environment, engine arguments, the scheduler class.

Used by the profiling command, the engine benchmark and the engine tests.
vLLM is imported lazily (inside ``make_llm``) so importing this module is cheap.

CPU facts (docs/vllm-integration-notes.md): ``VLLM_CPU_KVCACHE_SPACE`` (whole
GiB) must be set; ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine core in
this process, so its scheduler is reachable; block sizes must be multiples of
32; ``enforce_eager`` avoids torch.compile; a model directory without weight
files needs ``load_format="dummy"`` (random weights).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from node.vllm.names import SCHEDULER
from node.vllm.node_config import NodeConfig


_CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def set_engine_env(*, in_process: bool = True) -> None:
    """Set the environment a CPU engine needs (existing values win, except the in-process switch)."""
    for key, value in _CPU_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"


def has_weights(model_dir: str | Path) -> bool:
    path = Path(model_dir)
    return path.is_dir() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))


def engine_kwargs(model_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Engine arguments for a small, fast-starting engine; ``overrides`` win."""
    kw: dict[str, Any] = dict(
        model=str(model_dir),
        load_format="auto" if has_weights(model_dir) else "dummy",
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        max_num_seqs=32,
        max_num_batched_tokens=512,
        enable_chunked_prefill=True,
        # Off here: the profiler (node/vllm/profiling.py) fits step times to the prompt tokens it
        # sends, and a cache hit would shorten those steps. The engine tests turn it on, as
        # deploy/serve.yaml does.
        enable_prefix_caching=False,
        seed=0,
    )
    kw.update(overrides)
    return kw


def make_llm(model_dir: str | Path, node_config: NodeConfig | None, **overrides: Any):
    """An in-process ``vllm.LLM``; with ``node_config`` it runs ``FairBatchingScheduler`` so configured.

    ``node_config=None`` builds vLLM's stock scheduler. The node config is
    published in ``FAIRBATCHING_NODE_CONFIG`` before the engine starts.
    """
    set_engine_env()
    if node_config is not None:
        os.environ.update(node_config.to_env())
        overrides.setdefault("scheduler_cls", SCHEDULER)
    from vllm import LLM

    return LLM(**engine_kwargs(model_dir, **overrides))


def engine_scheduler(llm) -> Any:
    """The engine core's scheduler of an in-process ``LLM``."""
    return llm.llm_engine.engine_core.engine_core.scheduler


def machine_name() -> str:
    """CPU model and core count, e.g. ``AMD EPYC (2 cores)``; the GPU name when torch sees one."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    except Exception:  # noqa: BLE001 - torch missing or broken: describe the CPU
        pass
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"
