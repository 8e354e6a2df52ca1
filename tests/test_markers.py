"""`make test-fast` runs -m "not slow and not e2e": the e2e marker must select the loop and server tests.

Checked in a real pytest subprocess that only collects (nothing runs), over the known e2e modules and
one fast module, so a renamed file or a hook that stopped marking shows up here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent
FAST_MODULE = "test_architecture.py"  # collects in well under a second and is not e2e


def collect(marker: str) -> list[str]:
    """Node ids pytest selects with `-m marker` among the known e2e modules and one fast module."""
    paths = [str(TESTS / name) for name in (*conftest.E2E_MODULES, FAST_MODULE)]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            marker,
            *paths,
        ],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        timeout=300,
    )
    # 0: collected some; 5: none selected. Anything else is a collection error, shown in full.
    assert done.returncode in (0, 5), done.stdout + done.stderr
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_e2e_selects_every_known_e2e_module_and_nothing_else() -> None:
    for name in conftest.E2E_MODULES:
        assert (TESTS / name).is_file(), f"{name} is listed in conftest.E2E_MODULES but does not exist"
    selected = collect("e2e")
    assert selected, "the e2e marker selects no test: make test-fast would run the slow loop tests"
    modules = {node.split("::")[0].rsplit("/", 1)[-1] for node in selected}
    assert modules == set(conftest.E2E_MODULES), f"e2e selected {sorted(modules)}"
    unmarked = [node for node in collect("not e2e") if not node.startswith(f"tests/{FAST_MODULE}")]
    assert not unmarked, f"tests in e2e modules without the e2e marker: {unmarked}"


def test_a_server_fixture_marks_only_the_tests_that_use_it() -> None:
    # test_deploy_pool.py is mostly pure functions; its one real-server test is e2e by its fixture.
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", "e2e"]
        + [str(TESTS / "test_deploy_pool.py")],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    selected = [line.split("::")[1] for line in done.stdout.splitlines() if "::" in line]
    assert selected == [
        "test_pool_repairs_a_worker_created_pool_and_serve_refuses_then_replaces_its_deployment"
    ]
