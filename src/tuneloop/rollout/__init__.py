"""Canary rollout: per-version counters, the pure step decision, and the metric sources.

`analysis.judge_step` decides; `sources` reads the service's `/metrics` or a Prometheus server;
`tuneloop.steps.rollout` composes them with the registry (this package imports no other stage).
"""
