"""The errors a user can fix, whichever step raised them.

Front-ends (the CLI) turn these into a one-line message and exit code 2 instead of a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def user_errors() -> tuple[type[Exception], ...]:
    """Exception types that mean "the request or the state needs fixing", not "tuneloop broke"."""
    from tuneloop.data.ingest import IngestError
    from tuneloop.registry.store import RegistryError

    return (IngestError, RegistryError, FileNotFoundError, ValueError)
