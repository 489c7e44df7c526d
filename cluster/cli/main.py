"""The ``fairbatching`` command line. Each command group lives in its own module."""

from __future__ import annotations

import typer

from cluster.cli.bench import app as bench_app
from cluster.cli.engine import profile, tiny_model
from cluster.cli.serve import load, serve, status
from cluster.cli.sim import app as sim_app
from cluster.cli.trace import app as trace_app

app = typer.Typer(
    help="FairBatching: fair batch scheduling and Prefill-Admission-Budget routing for LLM serving.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(bench_app, name="bench")
app.command("profile")(profile)
app.command("tiny-model")(tiny_model)
app.add_typer(sim_app, name="sim")
app.add_typer(trace_app, name="trace")
app.command("serve")(serve)
app.command("status")(status)
app.command("load")(load)

if __name__ == "__main__":
    app()
