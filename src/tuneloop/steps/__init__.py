"""The composition root: each function here is one step of the loop.

A CLI command and a Prefect flow call the same step, so every step runs with or without Prefect,
and the wiring between stages (data -> train -> evaluate -> registry -> convert) is written once.
Steps take `Settings` and return plain, JSON-ready dicts: what `--json` prints and what a flow
passes on. Stage packages (`data`, `train`, `evaluate`, `registry`, `convert`) never import each
other's internals; only this package, `cli*.py` and `flows/` put them together.
"""
