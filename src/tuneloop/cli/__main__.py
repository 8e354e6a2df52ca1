"""`python -m tuneloop.cli` is the `tuneloop` command."""

from tuneloop.cli.main import app

app()
