"""Signed request ids: any worker or replica can take feedback without shared memory.

A request id is `<payload>.<signature>`, both base64url: the payload is compact JSON holding a
random nonce, the time, for each item the version that answered and the label it gave, and a keyed
digest of each item's text; the signature is HMAC-SHA256 of the payload under a secret every
worker shares. Feedback on an id whose signature does not match (forged, altered, signed by another
deployment) or that is too old is refused before anything is counted or written, and a text sent
with feedback must have the digest of the text that item classified: a client cannot land
(text, label) rows for texts the service never saw.

The text digest is HMAC-SHA256 under the same secret, cut to 16 bytes (22 base64 characters):
keyed, so the payload (readable by whoever holds the id) does not let anyone test guesses of a
text against it, and 128 bits, so no other text matches it by chance.

Size: one item costs about 35 + len(version) + len(label) bytes of JSON, so 64 items of
20-character labels make ~3.7 kB, ~4.9 kB after base64: well inside a JSON field.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path


class BadRequestId(ValueError):
    """The request id cannot be trusted or used; the message says why."""


@dataclass(frozen=True)
class RequestRecord:
    """What a request id vouches for."""

    nonce: str
    issued_at: float
    items: tuple[tuple[str, str], ...]  # (model version, predicted label) per input item
    digests: tuple[str, ...] = ()  # text_digest of each item's text (empty in ids made before them)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())


# Bytes of the keyed text digest: 128 bits (see the module docstring).
TEXT_DIGEST_BYTES = 16


def text_digest(secret: bytes, text: str) -> str:
    """The keyed digest of one classified text that a request id carries (text must be UTF-8-encodable)."""
    mac = hmac.new(secret, b"text:" + text.encode("utf-8"), hashlib.sha256).digest()
    return _b64(mac[:TEXT_DIGEST_BYTES])


def sign_request(secret: bytes, record: RequestRecord) -> str:
    """The request id for `record`."""
    body: dict[str, object] = {
        "n": record.nonce,
        "t": round(record.issued_at, 3),
        "i": [list(i) for i in record.items],
    }
    if record.digests:
        body["d"] = list(record.digests)
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    return f"{payload}.{_sign(secret, payload)}"


def verify_request(
    secret: bytes, request_id: str, max_age_s: float, now: float | None = None
) -> RequestRecord:
    """The record a request id vouches for; raises BadRequestId when it is forged, garbled or old."""
    payload, sep, signature = request_id.partition(".")
    if not sep or not payload or not signature:
        raise BadRequestId("request_id is not one this service issued (expected '<payload>.<signature>')")
    # Bytes, not str: compare_digest refuses a non-ASCII str with TypeError (a 500 for a typo).
    if not hmac.compare_digest(signature.encode(), _sign(secret, payload).encode()):
        raise BadRequestId("request_id has a signature this service did not make: it was altered or forged")
    try:
        body = json.loads(_unb64(payload))
        items = tuple((str(v), str(label)) for v, label in body["i"])
        digests = tuple(str(d) for d in body.get("d", ()))
        if digests and len(digests) != len(items):
            raise ValueError(f"{len(digests)} text digests for {len(items)} items")
        record = RequestRecord(str(body["n"]), float(body["t"]), items, digests)
    except (ValueError, KeyError, TypeError) as exc:  # signed but unreadable: a bug, still the caller's 4xx
        raise BadRequestId(f"request_id payload cannot be read: {exc}") from exc
    age = (time.time() if now is None else now) - record.issued_at
    if age > max_age_s:
        raise BadRequestId(
            f"request_id is {age / 3600:.1f} h old; feedback is taken for "
            f"{max_age_s / 3600:.1f} h after a request"
        )
    return record


def load_or_create_secret(path: Path) -> bytes:
    """The host's request-id key at `path`, made once (32 random bytes, mode 0600) by whichever
    worker gets there first: the others read the same file, so any worker verifies any id."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # fails if another worker linked first: then theirs is the key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()
