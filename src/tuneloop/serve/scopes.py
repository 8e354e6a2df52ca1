"""Bearer-token scopes of the service: which path needs which scope, which token variable grants
which scopes, and the 401/403 answer to a request's Authorization header. Pure data and functions;
the ASGI middleware (middleware.py) asks `auth_refusal` before anything reads the body. (The HMAC
request ids of /classify and /feedback are tokens.py's.)
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

# Bearer tokens. Each guarded path needs one scope; each token variable grants a set of scopes, so
# a scrape credential cannot post /feedback (which lands in training data) and a labelling tool
# cannot classify or read the service's business figures. A path not listed needs ALL_SCOPE, which
# only TUNELOOP_API_TOKEN grants: a route added later is closed to the scoped tokens until it is
# given a scope here. /docs.json (the API's schema) is for callers of /classify; the Swagger page at
# "/" and its /static_content are unlisted (a browser sends no bearer header anyway).
METRICS_SCOPE, CLASSIFY_SCOPE, FEEDBACK_SCOPE, ALL_SCOPE = "metrics", "classify", "feedback", "all"
PATH_SCOPES: Mapping[str, str] = {
    "/metrics": METRICS_SCOPE,
    "/status": METRICS_SCOPE,
    "/classify": CLASSIFY_SCOPE,
    "/docs.json": CLASSIFY_SCOPE,
    "/feedback": FEEDBACK_SCOPE,
}
# Variable -> the scopes its token grants; the first is the all-scopes token.
TOKEN_SCOPES: Mapping[str, frozenset[str]] = {
    "TUNELOOP_API_TOKEN": frozenset({ALL_SCOPE, METRICS_SCOPE, CLASSIFY_SCOPE, FEEDBACK_SCOPE}),
    "TUNELOOP_METRICS_TOKEN": frozenset({METRICS_SCOPE}),
    "TUNELOOP_CLASSIFY_TOKEN": frozenset({CLASSIFY_SCOPE}),
    "TUNELOOP_FEEDBACK_TOKEN": frozenset({FEEDBACK_SCOPE}),
}


class TokenConflict(ValueError):
    """Two token variables hold the same value: which scopes that bearer has would be ambiguous."""


def scope_holders(scope: str) -> list[str]:
    """The token variables whose token grants `scope` (for messages: never a token's value)."""
    return [variable for variable, scopes in TOKEN_SCOPES.items() if scope in scopes]


def auth_refusal(
    tokens: Mapping[str, frozenset[str]], path_scopes: Mapping[str, str], path: str, auth: str
) -> tuple[int, str, list[tuple[str, str]]] | None:
    """401 for a missing or unknown bearer token, 403 for a known one without the path's scope."""
    needed = path_scopes.get(path, ALL_SCOPE)
    holders = " or ".join(scope_holders(needed)) or "a token with that scope"
    scheme, _, given = auth.partition(" ")
    presented = given.strip().encode()
    granted: frozenset[str] | None = None
    # compare_digest against every configured token (no early exit): the time taken reveals
    # neither how much of a guess was right nor which token it resembled.
    for token, scopes in tokens.items():
        if hmac.compare_digest(presented, token.encode()) and scheme.lower() == "bearer":
            granted = scopes
    if granted is None:
        why = "is missing" if not auth else "is not one of the configured tokens"
        return (
            401,
            f"the bearer token {why}: {path} needs scope '{needed}'; send "
            f"'Authorization: Bearer <token>' with the token of {holders}",
            [("www-authenticate", 'Bearer realm="tuneloop"')],
        )
    if needed not in granted:
        return (
            403,
            f"this token lacks scope '{needed}', which {path} needs: use the token of {holders}",
            [],
        )
    return None


def token_scopes(by_variable: Mapping[str, str]) -> dict[str, frozenset[str]]:
    """Token -> scopes for `configured_tokens`' answer; TokenConflict when two variables share a
    value (each variable grants different scopes, so that bearer's scopes would be a guess)."""
    scopes: dict[str, frozenset[str]] = {}
    holder: dict[str, str] = {}
    for variable, token in by_variable.items():
        if token in holder:
            raise TokenConflict(
                f"{holder[token]} and {variable} hold the same token, but grant different scopes "
                f"({describe_scopes(TOKEN_SCOPES[holder[token]])} vs "
                f"{describe_scopes(TOKEN_SCOPES[variable])}): give each its own token"
            )
        holder[token] = variable
        scopes[token] = TOKEN_SCOPES[variable]
    return scopes


def describe_scopes(scopes: Iterable[str]) -> str:
    """'all scopes' for the all-scopes token's set, else the scopes by name."""
    scopes = frozenset(scopes)
    return "all scopes" if ALL_SCOPE in scopes else ", ".join(sorted(scopes))


def describe_auth(by_variable: Mapping[str, str]) -> str:
    """What /status says of auth: 'off', or 'bearer: ' and each configured variable's scopes."""
    if not by_variable:
        return "off"
    said = [f"{variable} ({describe_scopes(TOKEN_SCOPES[variable])})" for variable in by_variable]
    return "bearer: " + "; ".join(said)


def unopened_paths(by_variable: Mapping[str, str], path_scopes: Mapping[str, str] = PATH_SCOPES) -> list[str]:
    """Paths no configured token opens, when auth is on (nobody can call them): for a warning."""
    if not by_variable:
        return []
    granted = frozenset().union(*(TOKEN_SCOPES[variable] for variable in by_variable))
    return sorted(path for path, scope in path_scopes.items() if scope not in granted)
