"""Feedback: checked against the signed request id, taken once per item, landed for the next round.

`FeedbackDesk.take` is the whole /feedback path, in this order:

1. the request id must verify (tokens.py) and `index` must name one of its items;
2. the label must follow the ingest label rules, and a text sent with it must be the very text that
   item classified (its keyed digest is in the signed id), so no client lands (text, label) rows
   for texts the service never saw;
   A text is redacted before anything looks at it, as /classify redacted the text it classified.
3. the item is claimed in `ClaimBook`: one feedback per (request, item), across worker processes
   and every replica that shares the folder. A second one is refused (409), so one request id
   posted 100 times counts once and cannot fill a canary's feedback sample on its own;
4. only then is it counted, and with a text, written into the landing folder.

Steps 3 and 4 touch the file system (an O_EXCL create, a write and an fsync, maybe on a shared
network volume) and run in a thread: on the event loop they would stall every /classify of the
worker for as long as the volume takes.

Landing rows: one JSONL file per feedback row, written under an in-flight name (a leading dot,
which ingest never reads) and renamed into place, so a reader sees the whole row or nothing and
writers in any number of workers never share a file. Columns: text, label (what ingest reads),
source `feedback`, and what the service answered, for audit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from tuneloop.serve.limits import feedback_problem
from tuneloop.serve.tokens import BadRequestId, RequestRecord, text_digest, verify_request

DAY_FORMAT = "%Y%m%d"
ONE_DAY = timedelta(days=1)


class FeedbackRefused(ValueError):
    """Feedback that is not taken; `status` is the HTTP answer (400 bad, 409 already given)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Feedback:
    """What one taken feedback said about one answer."""

    model_version: str
    predicted: str
    label: str
    correct: bool
    landed: bool


class FeedbackObserver(Protocol):
    def feedback(self, version: str, correct: bool) -> None: ...


def write_feedback_row(landing: Path, row: dict[str, str]) -> Path:
    """Write `row` (text, label, ...) as `feedback-<time>-<random>.jsonl` in `landing`; return it."""
    landing.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    final = landing / f"feedback-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"
    tmp = landing / f".{final.name}.part"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({**row, "source": "feedback"}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no half-written file behind
    return final


class ClaimBook:
    """One claim per (request, item): a file created with O_EXCL, which exactly one creator wins.

    O_CREAT | O_EXCL is atomic on one host and on NFS v3+ and the cloud file systems a shared
    TUNELOOP_HOME sits on, so it holds across workers and replicas without a lock service. Files
    sit under the UTC day the request was issued: a request id older than `max_age_s` is refused
    anyway, so day folders past that are deleted, at most once a day. Volume: one small file per
    feedback, e.g. 100,000 a day kept 7 days = 700,000 files, spread over 256 sub-folders a day.
    """

    def __init__(self, folder: Path, max_age_s: float, clock: Callable[[], float] = time.time) -> None:
        self.folder, self.max_age_s = folder, max_age_s
        self._clock = clock
        self._pruned_on: str | None = None

    def path(self, record: RequestRecord, index: int) -> Path:
        day = datetime.fromtimestamp(record.issued_at, UTC).strftime(DAY_FORMAT)
        key = hashlib.sha256(record.nonce.encode("utf-8")).hexdigest()[:32]
        return self.folder / day / key[:2] / f"{key}-{index}"

    def claim(self, record: RequestRecord, index: int) -> Path:
        """Claim item `index` of `record`; raises FileExistsError when it was claimed before."""
        self._prune()
        path = self.path(record, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(datetime.now(UTC).isoformat(timespec="seconds"))
        return path

    def release(self, path: Path) -> None:
        """Give a claim back (its feedback could not be kept), so the client may send it again."""
        path.unlink(missing_ok=True)

    def _prune(self) -> None:
        now = datetime.fromtimestamp(self._clock(), UTC)
        today = now.strftime(DAY_FORMAT)
        if self._pruned_on == today or not self.folder.is_dir():
            return
        self._pruned_on = today
        oldest = now - timedelta(seconds=self.max_age_s)
        for child in self.folder.iterdir():
            if not re.fullmatch(r"\d{8}", child.name):
                continue
            # The folder holds requests issued on that day, up to its end: past max_age only then.
            ends = datetime.strptime(child.name, DAY_FORMAT).replace(tzinfo=UTC) + ONE_DAY
            if ends < oldest:
                shutil.rmtree(child, ignore_errors=True)


class FeedbackDesk:
    """Takes /feedback: checks, claims, counts and lands (see the module docstring)."""

    def __init__(
        self,
        *,
        secret: bytes,
        max_age_s: float,
        label_pattern: str,
        max_chars: int,
        claims: ClaimBook,
        landing: Path,
        observer: FeedbackObserver,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.secret, self.max_age_s = secret, max_age_s
        self.redact = redact
        self.label_pattern, self.max_chars = label_pattern, max_chars
        self.claims, self.landing, self.observer = claims, landing, observer

    def _problem(self, label: str, text: str | None) -> str | None:
        return feedback_problem(label, text, self.label_pattern, self.max_chars)

    def check(self, request_id: str, index: int, label: str, text: str | None) -> RequestRecord:
        """The record the feedback is about; raises FeedbackRefused(400) for anything wrong with it."""
        try:
            record = verify_request(self.secret, request_id, self.max_age_s)
        except BadRequestId as exc:
            raise FeedbackRefused(400, str(exc)) from exc
        if not 0 <= index < len(record.items):
            raise FeedbackRefused(
                400, f"index {index} is out of range: that request had {len(record.items)} texts"
            )
        problem = self._problem(label, text)
        if problem:
            raise FeedbackRefused(400, problem)
        if text is not None:
            if not record.digests:
                raise FeedbackRefused(
                    400,
                    "this request_id carries no text digests (issued by an older service): leave text out",
                )
            if text_digest(self.secret, text) != record.digests[index]:
                raise FeedbackRefused(
                    400,
                    f"text is not the text that item {index} of this request classified: send it exactly "
                    "as it was sent to /classify, or leave it out",
                )
        return record

    async def take(
        self, request_id: str, index: int, label: str, text: str | None, tenant: str | None = None
    ) -> Feedback:
        """Check, claim (once per item), count and land one feedback; raises FeedbackRefused.

        The label and text are redacted first (`redact`, the service's redactor, as /classify did
        before it signed the text's digest), so they are checked, and landed, with placeholders
        only; a label that held personal data then fails the label pattern (400).
        """
        redact = self.redact
        if redact is not None:  # a label is the caller's free text too (a card number matches it)
            label = await asyncio.to_thread(redact, label)
        if text is not None and redact is not None and not self._problem(label, text):
            text = await asyncio.to_thread(redact, text)
        record = self.check(request_id, index, label, text)
        version, predicted = record.items[index]
        row = None
        if text is not None:
            row = {"text": text, "label": label, "model_version": version, "predicted": predicted}
            if tenant is not None:  # credited to the tenant whose token sent it (audit, exclusion)
                row["tenant"] = tenant
        await asyncio.to_thread(self._keep, record, index, row)
        correct = predicted == label
        self.observer.feedback(version, correct)
        return Feedback(version, predicted, label, correct, landed=row is not None)

    def _keep(self, record: RequestRecord, index: int, row: dict[str, str] | None) -> None:
        """Claim the item, then land the row; a row that cannot be written gives the claim back."""
        try:
            claim = self.claims.claim(record, index)
        except FileExistsError:
            raise FeedbackRefused(
                409, f"feedback on item {index} of this request was given already; it is taken once"
            ) from None
        if row is None:
            return
        try:
            write_feedback_row(self.landing, row)
        except BaseException:
            self.claims.release(claim)
            raise
