"""``python -m edge_agent.client <verb>``: the central-facing verbs without the full ``edge-agent`` CLI."""

import typer

from edge_agent.client.cli import register

app = typer.Typer(add_completion=False, no_args_is_help=True, help="edge agent: talk to the central")
register(app)

if __name__ == "__main__":
    app()
