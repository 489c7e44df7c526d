"""``fairbatching trace``: generate workloads for the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(help="Generate workload traces for the simulator.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


@app.command()
def multiturn(
    out: Path = typer.Option(..., "--out", help="CSV to write (timestamp ms, input_length, output_length, hash_ids, conversation_id, turn)."),
    conversations: int = typer.Option(1000, help="Conversations; each starts at a Poisson arrival."),
    conversation_rate_rps: float = typer.Option(1.0, help="New conversations per second."),
    mean_turns: float = typer.Option(5.0, help="Mean turns of a conversation (geometric, at least 1)."),
    max_turns: int = typer.Option(20, help="Most turns of a conversation."),
    system_prompts: int = typer.Option(8, help="Distinct shared system prompts (0: none); each conversation uses one, drawn uniformly."),
    system_prompt_tokens: int = typer.Option(512, help="Length of every system prompt, tokens."),
    question_scale: float = typer.Option(0.25, help="A turn's new message is a ShareGPT prompt length times this (ShareGPT prompts carry earlier turns)."),
    max_context_tokens: int = typer.Option(8192, help="A conversation ends when a turn's prompt plus reply would pass this, tokens."),
    think_time_s: float = typer.Option(20.0, help="Mean (exponential) time a user thinks after a reply streamed, seconds."),
    reply_tpot_s: float = typer.Option(0.05, help="Seconds per output token a reply takes to stream, before the user's think time starts."),
    block_tokens: int = typer.Option(16, help="Tokens per block hash (pass the same --prefix-block-tokens to sim)."),
    seed: int = typer.Option(0, help="Seed of every draw."),
    sharegpt: Optional[Path] = typer.Option(None, help="ShareGPT length statistics CSV (default: the shared traces' copy)."),
) -> None:
    """Write a multi-turn conversation trace: prompts grow by each turn's reply and the next question
    (lengths from ShareGPT), turns follow the previous reply plus a think time, block hashes per prompt.

    Replay it with `fairbatching sim run --trace OUT --columns timestamp:ms,input_length,output_length,hash_ids`.
    The model is documented in cluster/workload/multiturn.py.
    """
    from cluster.workload.multiturn import MULTITURN_COLUMNS, MultiTurnModel, generate, summary, write_csv
    from cluster.workload.traces import TraceError

    try:
        model = MultiTurnModel(
            conversations=conversations, conversation_rate_rps=conversation_rate_rps, mean_turns=mean_turns,
            max_turns=max_turns, system_prompts=system_prompts, system_prompt_tokens=system_prompt_tokens,
            question_scale=question_scale, max_context_tokens=max_context_tokens, think_time_s=think_time_s,
            reply_tpot_s=reply_tpot_s, block_tokens=block_tokens, seed=seed,
        )
        turns = generate(model, sharegpt)
    except TraceError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    write_csv(turns, out)
    info = summary(turns, model)
    info.pop("model")
    console.print(json.dumps(info, indent=1))
    console.print(f"wrote {out}; read it with --columns {MULTITURN_COLUMNS} --prefix-block-tokens {block_tokens}")
