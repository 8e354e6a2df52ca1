"""The BentoML service: a front-end, like `cli/` and `demo/`, that composes the serve stage.

    bentoml serve tuneloop.service:TuneloopService      (or `tuneloop serve`)

`bento.py` holds the service class. It wires the serve stage's mechanisms (`tuneloop.serve`: the
follower, batcher, breaker, scoring, metrics, middleware) to the registry source that the
composition root builds (`tuneloop.steps.serve.RegistrySource`), in plain imports.
"""

from tuneloop.service.bento import TuneloopService

__all__ = ["TuneloopService"]
