"""``python -m central.server serve --data-dir DIR``: the server verbs without the full ``central`` CLI."""

import typer

from central.server.cli import register

app = typer.Typer(add_completion=False, no_args_is_help=True, help="central registry server")
register(app)

if __name__ == "__main__":
    app()
