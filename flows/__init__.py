"""Prefect flows: names, retries, schedules and wiring around `tuneloop.steps`; no logic."""
