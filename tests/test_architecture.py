"""The tree is the architecture: stage packages do not import each other, nothing imports Prefect.

Checked by parsing every module with `ast`, so an import hidden inside a function (the lazy imports
the house style asks for) counts as much as one at the top of the file.

Stage packages are the folders under `src/tuneloop/` other than `steps/` (the composition root) and
the front-ends. Front-ends are entry points: the CLI (`cli/`), the demo (`demo/`), the Prefect
flows (`flows/`, beside `src/`) and the BentoML service class (`service/`). The first three call
steps only; the service composes the serve stage's mechanisms with the step's registry source, so
it may import `serve/` and nothing else of the stages. The modules beside the packages (config.py,
files.py, testing.py) are not stages, but config.py and files.py are imported by every stage, so
they must not import a stage either: if they did, importing one stage would pull in another.
No two modules import each other, directly or through others (an import cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "tuneloop"
FLOWS = REPO / "flows"
COMPOSITION_ROOT = "steps"
# Front-ends and the stages each may import directly (none: through steps/ only).
FRONT_ENDS = {"cli": (), "demo": (), "service": ("serve",)}
STAGES = sorted(
    p.name
    for p in SRC.iterdir()
    if p.is_dir()
    and (p / "__init__.py").is_file()
    and p.name != COMPOSITION_ROOT
    and p.name not in FRONT_ENDS
)
# Shared helpers every stage may import: they import no stage themselves (checked below).
SHARED_MODULES = ("config.py", "files.py", "host.py", "progress.py", "projects.py")


def module_name(path: Path) -> str:
    """The dotted name a file under src/tuneloop or flows/ is imported as."""
    root = SRC.parent if path.is_relative_to(SRC) else REPO
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file (or `source`, as if at `path`)."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
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
    assert {"data", "train", "evaluate", "registry", "convert", "serve", "rollout"} <= set(STAGES)
    assert all((SRC / name / "__init__.py").is_file() for name in FRONT_ENDS)


def front_end_files() -> list[tuple[str, Path]]:
    found = [(name, p) for name in FRONT_ENDS for p in sorted((SRC / name).rglob("*.py"))]
    return found + [("flows", p) for p in sorted(FLOWS.glob("*.py"))]


@pytest.mark.parametrize("front_end", [*FRONT_ENDS, "flows"])
def test_a_front_end_reaches_stages_only_through_steps(front_end: str) -> None:
    allowed = FRONT_ENDS.get(front_end, ())
    offences = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for name, path in front_end_files()
        if name == front_end
        for line, module in imported_modules(path)
        if stage_of(module) not in (None, *allowed)
    ]
    assert not offences, (
        f"{front_end} is a front-end: it calls tuneloop.steps, which composes the stages; make what "
        "it needs a step function:\n" + "\n".join(offences)
    )


def import_graph() -> dict[str, set[str]]:
    """{module: modules of this project it imports}, for src/tuneloop and flows/.

    `from package import name` counts as importing `package.name` when that is a module, else
    `package`: a package's __init__ that imports nothing of its submodules is no cycle with them.
    """
    files = {module_name(p): p for p in [*SRC.rglob("*.py"), *FLOWS.glob("*.py")]}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps: set[str] = set()
        for line, module in imported_modules(path):
            del line
            if module in files:
                deps.add(module)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                if subs:
                    deps |= subs
                    if len(subs) == len(node.names):
                        deps.discard(node.module)
        graph[name] = deps - {name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other, directly or through others (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                cycles.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_two_modules_import_each_other() -> None:
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (move what both need into a third module):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_the_cycle_finder_sees_direct_and_longer_cycles() -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert import_cycles(graph) == [["a", "b"], ["c", "d", "e"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


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
