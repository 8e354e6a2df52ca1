"""Serving's pure parts and the follower, with small fakes in place of models and registry.

Routing, signed request ids, the breaker, input limits, backend choice, the follower's swap /
keep-last-good / rollback-from-memory rules, and batch scoring with a failing canary.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tuneloop.serve.backends import parse_backends, plan_backends, threads_per_session
from tuneloop.serve.breaker import CircuitBreaker
from tuneloop.serve.bundle import Bundle, LoadedModel
from tuneloop.serve.follower import Follower, RegistryState
from tuneloop.serve.limits import Limits, classify_problem, feedback_problem
from tuneloop.serve.routing import CANARY, CHAMPION, item_key, route, unit
from tuneloop.serve.scoring import Item, NotReady, ShortAnswer, score_items
from tuneloop.serve.tokens import BadRequestId, RequestRecord, sign_request, text_digest, verify_request
from tuneloop.steps.serve import parse_weight

SECRET = b"k" * 32


def test_route_share_matches_weight_and_is_monotone_and_sticky() -> None:
    keys = [item_key(None, "nonce", i) for i in range(4000)]
    share = sum(route(k, 0.25) == CANARY for k in keys) / len(keys)
    # binomial sd at n 4000, p 0.25: sqrt(.25 * .75 / 4000) = 0.0068; 4 sd = 0.027
    assert abs(share - 0.25) < 0.027
    assert all(route(k, 0.0) == CHAMPION for k in keys) and all(route(k, 1.0) == CANARY for k in keys)
    at_10 = {k for k in keys if route(k, 0.10) == CANARY}
    at_50 = {k for k in keys if route(k, 0.50) == CANARY}
    assert at_10 <= at_50  # raising the weight only moves champion keys to the canary
    sticky = item_key("user-7", "nonce-a", 0)
    assert sticky == item_key("user-7", "nonce-b", 5)  # a key ignores request and position
    assert 0.0 <= unit("x") < 1.0 and unit("x") == unit("x")


def test_request_ids_round_trip_and_refuse_forgery_and_age() -> None:
    record = RequestRecord("n1", 1000.0, (("3", "alpha"), ("4", "beta")))
    rid = sign_request(SECRET, record)
    assert verify_request(SECRET, rid, max_age_s=60, now=1010.0) == record
    payload, sig = rid.split(".")
    with pytest.raises(BadRequestId, match="signature"):
        verify_request(b"other" * 8, rid, 60, now=1010.0)
    with pytest.raises(BadRequestId, match="signature"):
        verify_request(SECRET, payload[:-2] + "AA." + sig, 60, now=1010.0)
    with pytest.raises(BadRequestId, match="old"):
        verify_request(SECRET, rid, 60, now=2000.0)
    with pytest.raises(BadRequestId, match="issued"):
        verify_request(SECRET, "garbage", 60)
    # Non-ASCII in either half is a forged id (4xx), not a TypeError from compare_digest (5xx).
    with pytest.raises(BadRequestId, match="signature"):
        verify_request(SECRET, payload + ".sïgnature", 60, now=1010.0)
    with pytest.raises(BadRequestId, match="signature"):
        verify_request(SECRET, "pаyload." + sig, 60, now=1010.0)


def test_request_ids_carry_a_keyed_digest_of_each_text() -> None:
    digests = (text_digest(SECRET, "my card"), text_digest(SECRET, "refund"))
    record = RequestRecord("n1", 1000.0, (("3", "alpha"), ("4", "beta")), digests)
    assert verify_request(SECRET, sign_request(SECRET, record), 60, now=1010.0) == record
    assert text_digest(SECRET, "my card") != text_digest(b"other" * 8, "my card")  # keyed
    assert text_digest(SECRET, "my card") != text_digest(SECRET, "my card ")
    assert len(digests[0]) == 22  # 16 bytes in base64url
    # 64 items of 20-character labels stay a few kB (tokens.py's size note).
    labels = tuple(("12", "x" * 20) for _ in range(64))
    big = RequestRecord("n" * 32, 1000.0, labels, tuple(text_digest(SECRET, str(i)) for i in range(64)))
    assert len(sign_request(SECRET, big)) < 5200


def test_breaker_opens_after_failures_and_half_opens_after_cooldown() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown_s=10, clock=lambda: now[0])
    for _ in range(2):
        breaker.record(False)
    assert breaker.allow() and breaker.state == "closed"
    breaker.record(False)
    assert not breaker.allow() and breaker.state == "open"
    now[0] = 10.0
    assert breaker.allow() and breaker.state == "half-open"
    breaker.record(False)  # the trial failed: open again at once
    assert not breaker.allow()
    now[0] = 20.0
    breaker.record(True)
    assert breaker.allow() and breaker.state == "closed"


def test_limits_name_what_to_fix() -> None:
    limits = Limits(max_texts=2, max_chars=10, max_key_chars=4)
    assert classify_problem(["ok"], None, limits) is None
    assert "empty" in (classify_problem([], None, limits) or "")
    assert "at most 2" in (classify_problem(["a", "b", "c"], None, limits) or "")
    assert "texts[1]" in (classify_problem(["a", "  "], None, limits) or "")
    assert "limit is 10" in (classify_problem(["x" * 11], None, limits) or "")
    assert "key" in (classify_problem(["a"], "toolong", limits) or "")
    pattern = r"^[a-z]+$"
    assert feedback_problem("alpha", None, pattern, 10) is None
    assert "pattern" in (feedback_problem("Bad!", None, pattern, 10) or "")
    assert "limit" in (feedback_problem("alpha", "x" * 11, pattern, 10) or "")


def test_a_lone_surrogate_is_refused_as_not_text_and_nul_or_emoji_pass() -> None:
    # JSON's "\ud800" decodes to a str no encoder takes: the tokenizer would raise (a 5xx).
    limits = Limits(max_texts=4, max_chars=50, max_key_chars=10)
    said = classify_problem(["fine", "\ud800 apple"], None, limits) or ""
    assert "texts[1]" in said and "U+D800" in said and "character 0" in said
    assert "key" in (classify_problem(["fine"], "k\udfff", limits) or "")
    assert classify_problem(["a\u0000b", "🍎 çé"], "ключ", limits) is None
    assert "surrogate" in (feedback_problem("alpha", "x\ud800", r"^[a-z]+$", 10) or "")


def test_backend_plan_serves_unchecked_conversions_only_with_torch() -> None:
    pref = parse_backends("tensorrt,onnx-int8,onnx-fp32,torch")
    passed = {"conversion": "passed", "conversion_path": "c/k", "int8_sha256": "a", "onnx_opt_sha256": "b"}
    plan, notes = plan_backends(pref, passed, "unavailable: no GPU")
    assert plan == ["onnx-int8", "onnx-fp32", "torch"] and notes == ["tensorrt: unavailable: no GPU"]
    for tags in ({"conversion": "failed", **{k: v for k, v in passed.items() if k != "conversion"}}, {}):
        plan, notes = plan_backends(pref, tags, "unavailable: no GPU")
        assert plan == ["torch"] and len(notes) == 3
    assert plan_backends(("onnx-int8",), {}, "")[0] == []
    # INT8 that passed parity but lost to fp32 when the conversion timed it: fp32 serves.
    plan, notes = plan_backends(pref, {**passed, "int8_serve": "fp32"}, "unavailable: no GPU")
    assert plan == ["onnx-fp32", "torch"] and "no faster than fp32" in notes[1]
    # TensorRT: where the host can run it and the conversion published an engine, it goes first.
    plan, notes = plan_backends(pref, {**passed, "trt_sha256": "c"}, "")
    assert plan == ["tensorrt", "onnx-int8", "onnx-fp32", "torch"] and notes == []
    plan, notes = plan_backends(pref, {**passed, "trt": "skipped: no NVIDIA GPU found"}, "")
    assert plan[0] == "onnx-int8" and "published no engine (trt: skipped: no NVIDIA GPU" in notes[0]
    with pytest.raises(ValueError, match="unknown"):
        parse_backends("onnx,cuda")
    assert threads_per_session(1, cores=2) == 2 and threads_per_session(2, cores=2) == 1
    assert threads_per_session(4, cores=2) == 1


def test_canary_weight_tag_is_read_safely() -> None:
    assert parse_weight(None) == (0.0, None) and parse_weight("0.25") == (0.25, None)
    for bad in ("lots", "1.5", "-0.1"):
        weight, problem = parse_weight(bad)
        assert weight == 0.0 and problem


class FakePredictor:
    def __init__(self, labels: list[str], winner: int, fail: bool = False) -> None:
        self.labels, self.winner, self.fail, self.calls = labels, winner, fail, 0

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom")
        probs = np.full((len(texts), len(self.labels)), 0.1, dtype=np.float32)
        probs[:, self.winner] = 1 - 0.1 * (len(self.labels) - 1)
        return probs


class FakeSource:
    def __init__(self) -> None:
        self.state = RegistryState({}, 0.0)
        self.broken: set[str] = set()
        self.unreachable = False
        self.loaded: list[str] = []

    def read_state(self) -> RegistryState:
        if self.unreachable:
            raise ConnectionError("registry unreachable")
        return self.state

    def load(self, version: str) -> LoadedModel:
        if version in self.broken:
            raise RuntimeError(f"v{version} does not match its recorded checksums")
        self.loaded.append(version)
        return LoadedModel(version, "fake", FakePredictor(["a", "b"], int(version) % 2))


def test_follower_swaps_keeps_last_good_and_rolls_back_from_memory() -> None:
    now = [0.0]
    source = FakeSource()
    follower = Follower(source, poll_s=1, retain_s=100, retry_failed_s=50, clock=lambda: now[0])
    assert follower.poll_once().champion is None  # no champion yet: not ready
    source.state = RegistryState({"champion": "1"}, 0.0)
    first = follower.poll_once()
    assert first.champion is not None and first.champion.version == "1"
    source.state = RegistryState({"champion": "1", "canary": "2"}, 0.3)
    bundle = follower.poll_once()
    assert bundle.canary is not None and bundle.effective_weight == 0.3
    assert first.canary is None  # the old bundle object never changed
    source.state = RegistryState({"champion": "2", "previous": "1"}, 0.0)  # promotion
    promoted = follower.poll_once()
    assert promoted.champion is not None and promoted.champion.version == "2"
    assert [m.version for m in promoted.retained] == ["1"]
    source.state = RegistryState({"champion": "1"}, 0.0)  # rollback: from memory
    rolled = follower.poll_once()
    assert rolled.champion is not None and rolled.champion.version == "1"
    assert source.loaded == ["1", "2"]  # nothing downloaded again
    source.broken.add("3")
    source.state = RegistryState({"champion": "3"}, 0.0)
    kept = follower.poll_once()
    assert kept.champion is not None and kept.champion.version == "1"
    assert "v3 not served" in (follower.status()["last_error"] or "")
    source.unreachable = True
    assert follower.poll_once() is kept
    assert "unreachable" in (follower.status()["last_error"] or "")
    now[0] = 200.0  # retention of v2 has lapsed
    source.unreachable, source.state = False, RegistryState({"champion": "1"}, 0.0)
    assert follower.poll_once().retained == ()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def batch(self, version: str, size: int, seconds: float) -> None:
        self.events.append(("batch", version, str(size)))

    def predicted(self, version: str, label: str, score: float) -> None:
        self.events.append(("predicted", version, label))

    def error(self, version: str) -> None:
        self.events.append(("error", version))

    def shadow(self, version: str, agreed: bool) -> None:
        self.events.append(("shadow", version, str(agreed)))


def test_scoring_routes_shadows_and_falls_back_from_a_failing_canary() -> None:
    champion = LoadedModel("1", "fake", FakePredictor(["a", "b"], 0))
    canary_model = FakePredictor(["a", "b"], 1)
    canary = LoadedModel("2", "fake", canary_model)
    items = [Item(f"text {i}", item_key(None, "n", i)) for i in range(200)]
    breaker = CircuitBreaker(failures=2, cooldown_s=60)
    rec = Recorder()
    out = score_items(
        Bundle(champion, canary, 0.5), items, breaker=breaker, observer=rec, top_k=2, shadow_share=1.0
    )
    versions = [p["model_version"] for p in out]
    assert versions == ["2" if route(i.key, 0.5) == CANARY else "1" for i in items]
    assert all(p["label"] == ("b" if p["model_version"] == "2" else "a") for p in out)
    assert len(out[0]["top_k"]) == 2 and math.isclose(out[0]["score"], 0.9, rel_tol=1e-6)
    shadows = [e for e in rec.events if e[0] == "shadow"]
    assert len(shadows) == versions.count("2") and all(e[2] == "False" for e in shadows)
    canary_model.fail = True
    for _ in range(2):
        out = score_items(
            Bundle(champion, canary, 0.5), items, breaker=breaker, observer=rec, top_k=1, shadow_share=0
        )
        assert {p["model_version"] for p in out} == {"1"}  # failing canary: champion answers
    calls = canary_model.calls
    score_items(Bundle(champion, canary, 0.5), items, breaker=breaker, observer=rec, top_k=1, shadow_share=0)
    assert canary_model.calls == calls and breaker.state == "open"  # breaker open: canary not called
    assert ("error", "2") in rec.events
    with pytest.raises(NotReady):
        score_items(Bundle(), items, breaker=breaker, observer=rec, top_k=1, shadow_share=0)


class ShortPredictor(FakePredictor):
    """A backend that drops the last row of every answer."""

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return super().predict_proba(texts)[:-1]


def test_a_short_answer_from_a_model_is_loud_never_shifted_onto_other_items() -> None:
    items = [Item(f"text {i}", item_key(None, "n", i)) for i in range(6)]
    rec = Recorder()
    short = LoadedModel("1", "fake", ShortPredictor(["a", "b"], 0))
    with pytest.raises(ShortAnswer, match="returned 5 rows for 6 texts"):
        score_items(
            Bundle(short), items, breaker=CircuitBreaker(5, 60), observer=rec, top_k=1, shadow_share=0
        )
    assert ("error", "1") in rec.events and not [e for e in rec.events if e[0] == "predicted"]
    # A short canary counts as a canary error: its items are answered by the champion, all of them.
    champion = LoadedModel("1", "fake", FakePredictor(["a", "b"], 0))
    canary = LoadedModel("2", "fake", ShortPredictor(["a", "b"], 1))
    breaker = CircuitBreaker(5, 60)
    out = score_items(
        Bundle(champion, canary, 1.0), items, breaker=breaker, observer=rec, top_k=1, shadow_share=0
    )
    assert [p["model_version"] for p in out] == ["1"] * 6 and ("error", "2") in rec.events


def test_a_closed_canary_sends_every_item_to_the_champion() -> None:
    champion = LoadedModel("1", "fake", FakePredictor(["a", "b"], 0))
    canary_model = FakePredictor(["a", "b"], 1)
    items = [Item(f"text {i}", item_key(None, "n", i)) for i in range(50)]
    bundle = Bundle(champion, LoadedModel("2", "fake", canary_model), 1.0)
    kwargs = {"breaker": CircuitBreaker(5, 60), "observer": Recorder(), "top_k": 1, "shadow_share": 0.0}
    assert {p["model_version"] for p in score_items(bundle, items, **kwargs)} == {"2"}  # type: ignore[arg-type]
    held = score_items(bundle, items, canary_open=False, **kwargs)  # type: ignore[arg-type]
    assert {p["model_version"] for p in held} == {"1"} and canary_model.calls == 1


def test_tensorrt_steps_aside_with_the_convert_stage_reason_where_it_cannot_run() -> None:
    from tuneloop.convert.tensorrt import tensorrt_status
    from tuneloop.steps.serve import tensorrt_reason

    assert tensorrt_reason(("onnx-int8", "torch")) == ""  # not wanted: not even asked
    available, why = tensorrt_status()
    reason = tensorrt_reason(("tensorrt", "onnx-int8"))
    assert (reason == "") == available
    if not available:  # this CPU machine: the words /status shows
        assert reason == f"unavailable: {why}"
