"""The item batcher: concurrent requests share model calls, nothing waits while the model is free."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tuneloop.serve.batching import ItemBatcher, Overloaded, ShortAnswer


def test_concurrent_requests_share_calls_and_get_their_own_items_in_order() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def score(items: list[str]) -> list[str]:
        sizes.append(len(items))
        gate.wait(5)  # the first call holds the model while the others queue
        return [text.upper() for text in items]

    async def main() -> list[list[str]]:
        batcher = ItemBatcher(score, max_batch_size=8, max_latency_ms=5000)
        first = asyncio.create_task(batcher.submit(["a"]))
        await asyncio.sleep(0.05)  # the model is now busy with the first request
        rest = [asyncio.create_task(batcher.submit([f"r{i}x", f"r{i}y"])) for i in range(5)]
        await asyncio.sleep(0.05)
        gate.set()
        return [await first, *[await task for task in rest]]

    answers = asyncio.run(main())
    assert answers == [["A"], *[[f"R{i}X", f"R{i}Y"] for i in range(5)]]
    # 1 alone, then whole requests up to 8 items (4 of the 5 two-item requests), then the last.
    assert sizes == [1, 8, 2]


def test_a_free_model_is_called_at_once_and_a_large_request_goes_alone() -> None:
    sizes: list[int] = []

    def score(items: list[int]) -> list[int]:
        sizes.append(len(items))
        return items

    async def main() -> float:
        batcher = ItemBatcher(score, max_batch_size=4, max_latency_ms=5000)
        start = time.perf_counter()
        assert await batcher.submit([1]) == [1]
        waited = time.perf_counter() - start
        assert await batcher.submit(list(range(10))) == list(range(10))
        assert await batcher.submit([]) == []
        return waited

    assert asyncio.run(main()) < 0.05
    assert sizes == [1, 10]


def test_items_that_waited_too_long_are_refused_and_errors_reach_every_request() -> None:
    def slow(items: list[int]) -> list[int]:
        time.sleep(0.3)
        if -1 in items:
            raise ValueError("model failed")
        return items

    async def main() -> tuple[object, object, object]:
        batcher = ItemBatcher(slow, max_batch_size=64, max_latency_ms=100)
        first = asyncio.create_task(batcher.submit([1]))
        await asyncio.sleep(0.02)
        late = asyncio.create_task(batcher.submit([2]))  # queued 280 ms > 100 ms when its turn comes
        results = await asyncio.gather(first, late, return_exceptions=True)
        failing = await asyncio.gather(batcher.submit([-1]), return_exceptions=True)
        return results[0], results[1], failing[0]

    ok, late, failed = asyncio.run(main())
    assert ok == [1]
    assert isinstance(late, Overloaded) and "100 ms" in str(late)
    assert isinstance(failed, ValueError)


def _three_requests_in_one_call(score) -> list[object]:  # type: ignore[no-untyped-def]
    """Submit ["a", "b"], ["bad", "c"] and ["d"] while the model is busy, so they share one call."""
    gate = threading.Event()

    def held(items: list[str]) -> list[str]:
        gate.wait(5)
        return score(items)

    async def main() -> list[object]:
        batcher = ItemBatcher(held, max_batch_size=64, max_latency_ms=5000)
        warm = asyncio.create_task(batcher.submit(["x"]))  # holds the model while the three queue
        await asyncio.sleep(0.05)
        jobs = [asyncio.create_task(batcher.submit(r)) for r in (["a", "b"], ["bad", "c"], ["d"])]
        await asyncio.sleep(0.05)
        gate.set()
        await warm
        return list(await asyncio.gather(*jobs, return_exceptions=True))

    return asyncio.run(main())


def test_an_item_that_breaks_the_model_fails_its_own_request_only() -> None:
    calls: list[list[str]] = []

    def score(items: list[str]) -> list[str]:
        calls.append(items)
        if "bad" in items:
            raise ValueError("the model cannot take 'bad'")
        return [t.upper() for t in items]

    ok_1, failed, ok_2 = _three_requests_in_one_call(score)
    assert ok_1 == ["A", "B"] and ok_2 == ["D"]
    assert isinstance(failed, ValueError) and "'bad'" in str(failed)
    # One shared call, then each request of it alone.
    assert calls[1:] == [["a", "b", "bad", "c", "d"], ["a", "b"], ["bad", "c"], ["d"]]


def test_a_short_answer_is_an_error_never_answers_handed_to_the_wrong_request() -> None:
    def drops_bad(items: list[str]) -> list[str]:
        return [t.upper() for t in items if t != "bad"]  # a backend that silently skips one item

    ok_1, short, ok_2 = _three_requests_in_one_call(drops_bad)
    assert ok_1 == ["A", "B"] and ok_2 == ["D"]  # not ["C", "D"] for the second request
    assert isinstance(short, ShortAnswer) and "1 of 2 items" in str(short)


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ItemBatcher(lambda items: items, max_batch_size=0, max_latency_ms=10)


def test_length_groups_split_a_batch_where_padding_would_waste_compute() -> None:
    from tuneloop.serve.backends import length_groups

    # Small batches stay whole: padding 5 x 20 - 60 = 40 tokens is under the 64 free tokens.
    assert length_groups([10, 20, 8, 12, 10]) == [[2, 0, 4, 3, 1]]
    lengths = [12, 80, 13, 11, 14, 75, 12, 13, 15, 12, 11, 13, 14, 12, 78, 13]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(16))  # every item once
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert padded <= 1.3 * sum(lengths) < 16 * 80  # one call would compute 1,280 tokens
    assert [lengths[i] for i in groups[-1]] == [75, 78, 80]  # the long texts ride together
    assert length_groups([]) == []
