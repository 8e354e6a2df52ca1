"""Serving: a BentoML service that follows the MLflow registry and splits canary traffic per item.

Pure decisions (routing, signed request ids, the circuit breaker, input limits, backend choice) sit
in small modules beside the adapters that act on them (backends, the registry follower, metrics,
the landing writer). This package holds mechanisms only: the BentoML service class that wires them
is a front-end (`tuneloop.service`), and the registry is read through a `Source` that the
composition root (`tuneloop.steps.serve.RegistrySource`) supplies, so this package imports no other
stage.
"""
