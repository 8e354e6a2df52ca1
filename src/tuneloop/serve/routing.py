"""Which alias answers an item: pure functions of the item's key and the canary weight.

In a batch, items from many requests are mixed, so each item carries what decides its route:
the caller's sticky key, or else the request's nonce and the item's index. Both become a number
in [0, 1) through sha256, so every worker and replica routes the same item the same way, and a
key routed to the canary at weight w stays there at every weight above w (monotone rollout).
"""

from __future__ import annotations

import hashlib

CHAMPION = "champion"
CANARY = "canary"

# 2**64 distinct draws: finer than any weight anyone will set.
_SCALE = float(1 << 64)


def unit(key: str, salt: str = "route") -> float:
    """A stable, uniform number in [0, 1) for `key` (first 8 bytes of sha256(salt:key))."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def item_key(sticky_key: str | None, nonce: str, index: int) -> str:
    """The routing key of one item: the caller's key (sticky), else a per-item draw of the request."""
    return f"k:{sticky_key}" if sticky_key is not None else f"r:{nonce}:{index}"


def route(key: str, canary_weight: float) -> str:
    """`canary` for a share `canary_weight` of keys (clamped to [0, 1]), else `champion`."""
    weight = min(max(canary_weight, 0.0), 1.0)
    return CANARY if unit(key) < weight else CHAMPION


def shadowed(key: str, share: float) -> bool:
    """Whether the champion also scores this canary item (an independent draw from routing)."""
    return unit(key, salt="shadow") < share
