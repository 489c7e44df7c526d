"""The ``fairbatching`` command line. Each command group lives in its own module."""

from __future__ import annotations

import typer

from cluster.cli_bench import app as bench_app

app = typer.Typer(
    help="FairBatching: fair batch scheduling and Prefill-Admission-Budget routing for LLM serving.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(bench_app, name="bench")

if __name__ == "__main__":
    app()
