"""The Prefect event names the flows emit and the deployments' triggers expect.

Here, not in a flow or in deploy.py, so that every flow and the deployments read them without
importing each other.
"""

DATA_LANDED = "tuneloop.data.landed"  # the ingest flow cut a snapshot (payload: rows)
DRIFT_DETECTED = "tuneloop.drift.detected"  # the watch flow saw the champion drift
# The resource label naming the project an event is about: each project's `continual` deployment
# answers its own project's events only (flows/deploy.py), so a drop in one project starts no round
# in another.
PROJECT_LABEL = "tuneloop.project"
