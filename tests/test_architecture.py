"""The tree is the architecture: stage packages do not import each other, nothing imports Prefect.

Checked by parsing every module with `ast`, so an import hidden inside a function (the lazy imports
the house style asks for) counts as much as one at the top of the file.

Stage packages are the folders under `src/tuneloop/` other than `steps/` (the composition root).
The modules beside them (config.py, files.py, testing.py, cli*.py, demo.py) are not stages, but
config.py is imported by every stage, so it must not import a stage either: if it did, importing
one stage would pull in another through it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tuneloop"
COMPOSITION_ROOT = "steps"
STAGES = sorted(
    p.name
    for p in SRC.iterdir()
    if p.is_dir() and (p / "__init__.py").is_file() and p.name != COMPOSITION_ROOT
)
# Shared helpers every stage may import: they import no stage themselves (checked below).
SHARED_MODULES = ("config.py", "files.py")


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file (or `source`, as if at `path`)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = ".".join(("tuneloop", *path.relative_to(SRC).parent.parts))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from tuneloop import registry` imports a stage as much as `import tuneloop.registry`.
            if name == "tuneloop":
                found += [(node.lineno, f"tuneloop.{alias.name}") for alias in node.names]
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "tuneloop" and parts[1] in STAGES:
        return parts[1]
    return None


def cross_stage_imports(path: Path, own_stage: str | None) -> list[str]:
    return [
        f"{path.relative_to(SRC.parent)}:{line} imports {module}"
        for line, module in imported_modules(path)
        if stage_of(module) not in (None, own_stage)
    ]


def test_the_stages_are_found() -> None:
    # Guards the test itself: if the layout moved, an empty list would pass everything below.
    assert {"data", "train", "evaluate", "registry", "convert"} <= set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_no_other_stage(stage: str) -> None:
    offences = [o for path in sorted((SRC / stage).rglob("*.py")) for o in cross_stage_imports(path, stage)]
    assert not offences, "stage packages must not import each other:\n" + "\n".join(offences)


@pytest.mark.parametrize("name", SHARED_MODULES)
def test_shared_modules_import_no_stage(name: str) -> None:
    offences = cross_stage_imports(SRC / name, None)
    assert not offences, f"{name} is imported by every stage, so it must import none:\n" + "\n".join(offences)


def test_nothing_under_src_imports_prefect() -> None:
    offences = [
        f"{path.relative_to(SRC.parent)}:{line} imports {module}"
        for path in sorted(SRC.rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] == "prefect"
    ]
    assert not offences, "Prefect belongs in flows/, never in src/tuneloop:\n" + "\n".join(offences)


def test_the_checker_sees_lazy_relative_and_package_imports() -> None:
    source = (
        "def f():\n"
        "    from tuneloop.registry.policy import GatePolicy\n"
        "    import prefect\n"
        "from ..convert import quantize\n"
        "from tuneloop import evaluate\n"
    )
    # As if it lived at train/probe.py (nothing is written there).
    names = {m for _, m in imported_modules(SRC / "train" / "probe.py", source)}
    assert names == {
        "tuneloop.registry.policy",
        "prefect",
        "tuneloop.convert",
        "tuneloop",
        "tuneloop.evaluate",
    }
    assert {stage_of(n) for n in names} == {"registry", "convert", "evaluate", None}
