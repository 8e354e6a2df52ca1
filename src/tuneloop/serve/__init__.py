"""Serving: a BentoML service that follows the MLflow registry and splits canary traffic per item.

Pure decisions (routing, signed request ids, the circuit breaker, input limits, backend choice) sit
in small modules beside the adapters that act on them (backends, the registry follower, metrics,
the landing writer) and the BentoML service class that wires them (`service.py`). The registry is
read through a `Source` that the composition root (`tuneloop.steps.serve`) supplies, so this
package imports no other stage.
"""
