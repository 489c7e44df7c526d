"""``fairbatching bench ...``: benchmarks that print ratios against baselines run alongside."""

from __future__ import annotations

import json
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
