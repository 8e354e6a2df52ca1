"""Adaptive batching on items across requests, with BentoML's own dispatcher.

Why not `@bentoml.api(batchable=True)` on /classify itself: a batchable BentoML API takes exactly
one argument and answers each request with its slice of the output list, so it can neither take
`{"texts": [...], "key": ...}` nor answer `{"request_id": ..., "predictions": [...]}`. The public
API builds that envelope and hands each request's items to the CorkDispatcher that batchable APIs
use (same adaptive window, same max_batch_size / max_latency_ms, same 503 when an item would wait
past max_latency_ms); items of concurrent requests share one model call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool


class Overloaded(RuntimeError):
    """An item would wait longer than max_latency_ms: answer 503 now rather than late."""


def _refuse() -> Any:
    raise Overloaded("the service is overloaded: items would wait past max_latency_ms; retry shortly")


class ItemBatcher:
    """Submit a request's items; `score` runs on the items of many requests at once, in a thread."""

    def __init__(
        self, score: Callable[[list[Any]], list[Any]], max_batch_size: int, max_latency_ms: int
    ) -> None:
        from bentoml._internal.marshal.dispatcher import CorkDispatcher

        def run(batches: Sequence[list[Any]]) -> list[list[Any]]:
            flat = [item for batch in batches for item in batch]
            out = score(flat)
            result, start = [], 0
            for batch in batches:
                result.append(out[start : start + len(batch)])
                start += len(batch)
            return result

        async def run_async(batches: Sequence[list[Any]]) -> list[list[Any]]:
            return await run_in_threadpool(run, batches)

        dispatcher: Any = CorkDispatcher(
            max_latency_in_ms=max_latency_ms,
            max_batch_size=max_batch_size,
            fallback=_refuse,
            get_batch_size=len,
        )
        self._submit = dispatcher(run_async)

    async def submit(self, items: list[Any]) -> list[Any]:
        """Outputs for `items`, in order (raises Overloaded, or what `score` raised)."""
        result: list[Any] = await self._submit(items)
        return result
