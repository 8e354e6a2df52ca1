"""Whether the canary may take traffic, given how long ago this worker last read the registry.

A rollout controller steers the canary only through the registry (the `canary` alias and the
`canary_weight` tag): a rollback sets the weight to 0 there first. A worker that cannot read the
registry cannot see that, so past `max_sync_age_s` without a successful read it sends every item
to the champion, the version the loop last vouched for, until a read succeeds again. The champion
keeps serving (taking the replica out of rotation would turn a registry outage into a service
outage); /status and the `tuneloop_registry_sync_timestamp_seconds` series show the age.
"""

from __future__ import annotations


def canary_hold(sync_age_s: float | None, max_sync_age_s: float) -> str | None:
    """Why the canary gets no traffic now (the registry is out of sight), or None when it may.

    `sync_age_s` is the time since the last successful registry read, None before the first one.
    """
    if sync_age_s is None:
        return "the registry has not been read yet"
    if sync_age_s > max_sync_age_s:
        return (
            f"the registry was last read {sync_age_s:.0f} s ago (limit {max_sync_age_s:.0f} s, "
            "TUNELOOP_SERVE_MAX_SYNC_AGE_S): a rollback there would not be seen, so the champion "
            "answers every item"
        )
    return None
