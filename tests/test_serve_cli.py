"""`tuneloop serve` refuses to expose the service without a token (unless told `--insecure`), and
refuses two token variables that hold the same token.

`os.execv` is replaced by a recorder: the test checks what would be run, not a server.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tuneloop.cli import app

runner = CliRunner()
TOKENS = (
    "TUNELOOP_API_TOKEN",
    "TUNELOOP_METRICS_TOKEN",
    "TUNELOOP_CLASSIFY_TOKEN",
    "TUNELOOP_FEEDBACK_TOKEN",
)


@pytest.fixture
def execs(monkeypatch) -> list[list[str]]:
    import tuneloop.cli.serve as serve

    ran: list[list[str]] = []
    monkeypatch.setattr(serve.os, "execv", lambda path, args: ran.append(list(args)))
    for variable in TOKENS:
        monkeypatch.delenv(variable, raising=False)
    return ran


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.7", "::", "service.example.com"])
def test_a_reachable_address_without_a_token_is_refused(execs: list[list[str]], host: str) -> None:
    result = runner.invoke(app, ["serve", "--host", host])
    assert result.exit_code == 2 and execs == []
    assert f"refusing to serve on {host} without a bearer token" in result.output
    assert all(variable in result.output for variable in TOKENS) and "--insecure" in result.output


def test_an_empty_token_is_no_token(execs: list[list[str]], monkeypatch) -> None:
    monkeypatch.setenv("TUNELOOP_API_TOKEN", "")
    assert runner.invoke(app, ["serve", "--host", "0.0.0.0"]).exit_code == 2 and execs == []


@pytest.mark.parametrize(
    ("args", "token"),
    [
        (["--host", "0.0.0.0"], "t0ken"),  # what the image and the k8s manifests run, with the Secret
        (["--host", "0.0.0.0", "--insecure"], None),
        (["--host", "127.0.0.1"], None),  # the default and the demo's
        (["--host", "localhost"], None),
        (["--host", "::1"], None),
    ],
)
def test_a_token_insecure_or_loopback_starts_the_server(
    execs: list[list[str]], monkeypatch, args: list[str], token: str | None
) -> None:
    if token:
        monkeypatch.setenv("TUNELOOP_API_TOKEN", token)
    result = runner.invoke(app, ["serve", *args, "--port", "3100"])
    assert result.exit_code == 0, result.output
    (argv,) = execs
    assert argv[1:4] == ["-m", "bentoml", "serve"] and argv[-4:] == ["--host", args[1], "--port", "3100"]


@pytest.mark.parametrize("variable", TOKENS)
def test_any_one_token_variable_is_enough_to_listen_on_a_reachable_address(
    execs: list[list[str]], monkeypatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "t0ken")
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert len(execs) == 1


def test_two_token_variables_with_one_value_are_refused_before_the_server_starts(
    execs: list[list[str]], monkeypatch
) -> None:
    monkeypatch.setenv("TUNELOOP_CLASSIFY_TOKEN", "same-value")
    monkeypatch.setenv("TUNELOOP_FEEDBACK_TOKEN", "same-value")
    result = runner.invoke(app, ["serve", "--host", "127.0.0.1"])
    assert result.exit_code == 2 and execs == []
    assert "TUNELOOP_CLASSIFY_TOKEN and TUNELOOP_FEEDBACK_TOKEN hold the same token" in result.output
    assert "same-value" not in result.output


def test_loopback_is_the_loopback_range_only() -> None:
    from tuneloop.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("my-host")
