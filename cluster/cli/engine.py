"""``fairbatching profile`` and ``fairbatching tiny-model``: real-engine tooling.

vLLM is imported inside the command functions only, so ``fairbatching --help``
stays fast and the policy core imports without vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console


def tiny_model(
    out_dir: Path = typer.Argument(..., help="Directory to write the model into (created if missing)."),
    hidden_size: int = typer.Option(128, min=8),
    num_layers: int = typer.Option(2, min=1),
    num_heads: int = typer.Option(4, min=1),
    num_kv_heads: int = typer.Option(2, min=1),
    vocab_size: int = typer.Option(1024, min=8),
) -> None:
    """Write a small Llama config and an offline word-level tokenizer (random weights at load; no downloads)."""
    from node.vllm.tiny_model import write_tiny_model

    try:
        path = write_tiny_model(
            out_dir, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
            num_kv_heads=num_kv_heads, vocab_size=vocab_size,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    Console().print(f"tiny model written to {path} (serve it with load_format='dummy')")


def profile(
    model: Path = typer.Option(..., "--model", help="Model directory (a tiny model dir gets random weights)."),
    out: Path = typer.Option(..., "--out", help="Profile JSON to write (node.fit.profile format)."),
    name: str = typer.Option("", help="Profile name (default: the output file's stem)."),
    hardware: str = typer.Option("", help="Hardware description (default: detected CPU or GPU)."),
    model_name: str = typer.Option("", help="Model description (default: from config.json)."),
    safety_factor: float = typer.Option(1.0, min=1.0, help="Safety factor stored with the fit."),
    max_num_batched_tokens: int = typer.Option(512, min=16),
    max_num_seqs: int = typer.Option(32, min=1),
    max_model_len: int = typer.Option(2048, min=64),
    dtype: str = typer.Option("float32", help="Engine dtype (float32 on CPU; bfloat16/auto on GPU)."),
    repeats: int = typer.Option(2, min=1, help="Rounds over the batch grid."),
    step_log: Path = typer.Option(None, help="Keep the raw step log here."),
) -> None:
    """Drive the real engine through decode-only, prefill-only and mixed batches; fit and write a profile."""
    from node.vllm.engine_setup import machine_name, set_engine_env
    from node.fit.profile import save_profile
    from node.vllm.profiling import Grid, profile_engine, to_profile

    if not (model / "config.json").is_file():
        raise typer.BadParameter(f"{model} has no config.json", param_hint="--model")
    set_engine_env()
    console = Console()
    grid = Grid(repeats=repeats)
    overrides = dict(
        max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
        max_model_len=max_model_len, dtype=dtype,
    )
    run = profile_engine(model, grid=grid, safety_factor=safety_factor, engine_overrides=overrides,
                         progress=lambda m: console.print(f"[dim]{m}[/dim]"), step_log=step_log)
    if not model_name:
        cfg = json.loads((model / "config.json").read_text())
        model_name = (
            f"{cfg.get('architectures', ['?'])[0]} hidden {cfg.get('hidden_size')} layers "
            f"{cfg.get('num_hidden_layers')} vocab {cfg.get('vocab_size')} ({dtype}) at {model}"
        )
    prof = to_profile(run, name=name or out.stem, hardware=hardware or machine_name(), model_name=model_name)
    save_profile(prof, out)
    m, r = run.step_model, run.report
    console.print(
        f"fitted on {len(run.samples) - run.dropped} of {len(run.samples)} steps: "
        f"a={m.a_s * 1e3:.3f} ms, b={m.b_s_per_token * 1e6:.2f} us/token, c={m.c_s_per_context_token * 1e9:.2f} ns/ctx, "
        f"e={m.attn_prefill_s_per_token_sq * 1e9:.3g} ns/prefill attention pair"
    )
    for kind, st in r.by_kind.items():
        console.print(f"  {kind.value:13s} n={st.samples:4d} MAPE={st.mape:6.1%} P99 abs={st.p99_abs_error_s * 1e3:.2f} ms "
                      f"P99 abs %={st.p99_ape:6.1%}")
    console.print(f"  overall       MAPE={r.overall.mape:6.1%} (all steps incl. dropped: {run.report_all.overall.mape:.1%})")
    if run.linear_fit is not None:
        console.print(f"  linear fit (e = 0, kept as linear_fit): MAPE={run.linear_fit[1].overall.mape:6.1%}")
    console.print(f"profile written to {out}")
