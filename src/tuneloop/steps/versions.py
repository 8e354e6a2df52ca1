"""Step: which version holds which alias, for front-ends that take an alias where a version goes."""

from __future__ import annotations

from tuneloop.config import Settings
from tuneloop.registry.store import ALIASES, Registry, RegistryError


def aliases(settings: Settings) -> dict[str, str]:
    """{alias: version} for tuneloop's aliases (champion, canary, challenger, previous)."""
    return Registry(settings).aliases()


def alias_version(settings: Settings, alias: str) -> str | None:
    """The version holding `alias`, or None when nobody holds it."""
    return aliases(settings).get(alias)


def resolve_version(settings: Settings, version: str) -> str:
    """A version number as given, or the version an alias (champion, canary, ...) points at."""
    if version not in ALIASES:
        return version
    found = alias_version(settings, version)
    if found is None:
        raise RegistryError(f"no version holds the alias {version!r}")
    return found
