"""The `tuneloop` command line: a front-end that calls `tuneloop.steps`, never a stage directly.

    main.py     the Typer app, global options, and ingest / status / config
    model.py    train, evaluate, approve, promote, convert, demo
    rollout.py  rollout, rollback, history (runnable alone: `python -m tuneloop.cli.rollout`)
    flows.py    retrain (one continual round in process), worker (the Prefect deployments)
    serve.py    serve (execs `bentoml serve` on the service front-end, `tuneloop.service`)
    privacy.py  redact (a text, or --check the stores)
    gc.py       gc (retention: old versions' bulk, quarantine copies)
    common.py   consoles, settings, JSON output, friendly errors
    tables.py   tables that fit the terminal (80 columns in a pipe or a CI log)

Every command mirrors a Prefect flow in `flows/` and calls the same step function. `app` is loaded on
first use (the console script `tuneloop.cli:app` asks for it), so `python -m tuneloop.cli.rollout`
does not import the whole app first.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        from tuneloop.cli.main import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
