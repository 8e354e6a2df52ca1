"""/feedback's rules, on the real FeedbackDesk and ClaimBook with a real folder (no server).

Replays count once (across processes too), a landed text must be the text that was classified, the
file system work runs off the event loop, and a row that cannot be written gives its claim back.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from tuneloop.serve.feedback import ClaimBook, FeedbackDesk, FeedbackRefused
from tuneloop.serve.tokens import RequestRecord, sign_request, text_digest

SECRET = b"s" * 32
PATTERN = r"^[a-z_]+$"
TEXTS = ("my card was declined", "where is my refund")


class Counts:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def feedback(self, version: str, correct: bool) -> None:
        self.seen.append((version, correct))


def issued(nonce: str = "a" * 32, at: float | None = None) -> tuple[RequestRecord, str]:
    record = RequestRecord(
        nonce,
        time.time() if at is None else at,
        (("2", "card_declined"), ("1", "refund")),
        tuple(text_digest(SECRET, t) for t in TEXTS),
    )
    return record, sign_request(SECRET, record)


def desk_at(tmp_path: Path, counts: Counts | None = None, **kwargs: object) -> FeedbackDesk:
    options: dict[str, object] = {
        "secret": SECRET,
        "max_age_s": 3600.0,
        "label_pattern": PATTERN,
        "max_chars": 100,
        "claims": ClaimBook(tmp_path / "claims", 3600.0),
        "landing": tmp_path / "landing",
        "observer": counts or Counts(),
    }
    return FeedbackDesk(**{**options, **kwargs})  # type: ignore[arg-type]


def test_one_request_id_posted_100_times_counts_once(tmp_path: Path) -> None:
    counts = Counts()
    desk = desk_at(tmp_path, counts)
    _, rid = issued()

    async def post_100() -> list[int]:
        statuses = []
        for _ in range(100):
            try:
                await desk.take(rid, 0, "card_declined", None)
                statuses.append(200)
            except FeedbackRefused as exc:
                statuses.append(exc.status)
        return statuses

    statuses = asyncio.run(post_100())
    assert statuses == [200] + [409] * 99
    assert counts.seen == [("2", True)]  # one labelled answer, not 100 at 100% accuracy
    # The other item of the same request is its own feedback.
    asyncio.run(desk.take(rid, 1, "card_declined", None))
    assert counts.seen == [("2", True), ("1", False)]


def test_a_landed_text_must_be_the_text_that_was_classified(tmp_path: Path) -> None:
    counts = Counts()
    desk = desk_at(tmp_path, counts)
    _, rid = issued()
    for text in ("buy bitcoin now", TEXTS[1], TEXTS[0] + " "):
        with pytest.raises(FeedbackRefused, match="is not the text that item 0") as refused:
            asyncio.run(desk.take(rid, 0, "refund", text))
        assert refused.value.status == 400
    assert not (tmp_path / "landing").exists() and counts.seen == []
    taken = asyncio.run(desk.take(rid, 0, "card_declined", TEXTS[0]))
    assert taken.landed and taken.correct
    (row,) = [json.loads(p.read_text()) for p in (tmp_path / "landing").glob("feedback-*.jsonl")]
    assert row["text"] == TEXTS[0] and row["label"] == "card_declined" and row["source"] == "feedback"
    # An id from before text digests lands nothing: its text cannot be checked.
    old = sign_request(SECRET, RequestRecord("b" * 32, time.time(), (("1", "refund"),)))
    with pytest.raises(FeedbackRefused, match="no text digests"):
        asyncio.run(desk.take(old, 0, "refund", "anything at all"))
    assert asyncio.run(desk.take(old, 0, "refund", None)).landed is False


def test_bad_feedback_is_a_400_that_names_the_problem(tmp_path: Path) -> None:
    desk = desk_at(tmp_path)
    _, rid = issued()
    for args, says in (
        (("x.y", 0, "refund", None), "signature"),
        ((rid, 2, "refund", None), "index 2 is out of range"),
        ((rid, 0, "Refund!", None), "label pattern"),
        ((rid, 0, "refund", "\ud800"), "lone surrogate"),
    ):
        with pytest.raises(FeedbackRefused, match=says) as refused:
            asyncio.run(desk.take(*args))  # type: ignore[arg-type]
        assert refused.value.status == 400


def _claim(folder: str, issued_at: float, start: object, results: object) -> None:
    record = RequestRecord("c" * 32, issued_at, (("1", "refund"),))
    start.wait()  # type: ignore[attr-defined]
    try:
        ClaimBook(Path(folder), 3600.0).claim(record, 0)
        results.put("won")  # type: ignore[attr-defined]
    except FileExistsError:
        results.put("lost")  # type: ignore[attr-defined]


def test_a_claim_is_won_by_exactly_one_of_many_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    procs = [
        context.Process(target=_claim, args=(str(tmp_path), time.time(), start, results)) for _ in range(6)
    ]
    for proc in procs:
        proc.start()
    start.set()
    outcomes = sorted(results.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(30)
    assert outcomes == ["lost"] * 5 + ["won"]


def test_claims_older_than_the_feedback_window_are_pruned(tmp_path: Path) -> None:
    day = 24 * 3600.0
    now = [10 * day + 3600.0]
    book = ClaimBook(tmp_path, max_age_s=2 * day, clock=lambda: now[0])
    for issued_day in (6, 7, 8, 9):
        book.claim(RequestRecord("d" * 32, issued_day * day + 60, (("1", "a"),)), 0)
    now[0] += day  # a new day: the first claim of it prunes
    book.claim(RequestRecord("e" * 32, now[0], (("1", "a"),)), 0)
    # Now is day 11 01:00 (1970-01-12), so ids issued before day 9 01:00 are refused: the folders of
    # days 6, 7 and 8 (which end by day 9 00:00) go, day 9's (1970-01-10, ends day 10) stays.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["19700110", "19700112"]


def test_claiming_and_landing_run_off_the_event_loop(tmp_path: Path, monkeypatch) -> None:
    """A slow volume (the fsync) must not stall the worker's event loop, where /classify runs."""
    import tuneloop.serve.feedback as feedback

    ticked = threading.Event()
    write = feedback.write_feedback_row

    def slow_write(landing: Path, row: dict[str, str]) -> Path:
        # Waits for the loop to run another coroutine: only possible when this runs in a thread.
        stalled = not ticked.wait(5)
        row = {**row, "stalled": str(stalled)}
        return write(landing, row)

    monkeypatch.setattr(feedback, "write_feedback_row", slow_write)
    desk = desk_at(tmp_path)
    _, rid = issued()

    async def main() -> None:
        async def tick() -> None:
            await asyncio.sleep(0.05)
            ticked.set()

        ticker = asyncio.create_task(tick())
        await desk.take(rid, 0, "card_declined", TEXTS[0])
        await ticker

    asyncio.run(main())
    (row,) = [json.loads(p.read_text()) for p in (tmp_path / "landing").glob("feedback-*.jsonl")]
    assert row["stalled"] == "False", "the landing write blocked the event loop"


def test_a_row_that_cannot_be_written_gives_its_claim_back(tmp_path: Path) -> None:
    counts = Counts()
    (tmp_path / "landing").write_text("a file where the landing folder should be")
    desk = desk_at(tmp_path, counts)
    _, rid = issued()
    with pytest.raises(OSError):
        asyncio.run(desk.take(rid, 0, "card_declined", TEXTS[0]))
    assert counts.seen == []  # nothing counted for feedback that was not kept
    (tmp_path / "landing").unlink()
    assert asyncio.run(desk.take(rid, 0, "card_declined", TEXTS[0])).landed  # the retry is taken
