"""The package's structure, read from its source: which module imports which (README, "Layout").

Imports inside functions count as much as those at the top (they are dependencies all the same); imports under
`if TYPE_CHECKING:` do not (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "latentsync"

# From the ground up; a module may import its own floor and the ones below, never one above.
FLOORS = [
    {"errors", "defaults", "devices", "fileio", "stderr_filter", "configs"},
    {"config", "media", "models"},
    {"audio", "face", "sync_score", "weights", "hub", "pipeline", "streaming", "estimate"},
    {"job", "inference", "data"},
    {"preprocess", "training", "evaluation", "batch", "finetune"},  # the first three import none of one another
    {"app", "app_faces", "app_middleware", "app_service", "cli", "demo", "__main__"},
]
APPLICATIONS = ("preprocess", "training", "evaluation")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports (the nearest module for a name inside one)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
                   for n in ast.walk(node)}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" for a in node.names]
            targets = [n for n in names if n in modules]
            if len(targets) < len(names):
                targets.append(base)  # a name defined in `base` itself
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _floor(name: str) -> int:
    top = _top(name)
    if top == "__init__":
        raise AssertionError("the package itself is on no floor")
    for level, tops in enumerate(FLOORS):
        if top in tops:
            return level
    raise AssertionError(f"{name}: on no floor; add {top!r} to FLOORS in {__file__}")


def test_every_module_is_on_a_floor_and_no_import_runs_up_one(graph):
    # The package itself stands apart: its front door shows the public API (`LipSync`, ...) from any floor, and
    # any module may read its `__version__` (it is imported before any of its modules).
    pairs = [(a, b) for a, targets in graph.items() for b in targets if PACKAGE not in (a, b)]
    upward = sorted(f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
                    for a, b in pairs if _floor(b) > _floor(a))
    assert upward == []


def test_the_data_pipeline_training_and_evaluation_import_none_of_one_another(graph):
    crossing = sorted(f"{a} imports {b}" for a, targets in graph.items() for b in targets
                      if _top(a) in APPLICATIONS and _top(b) in APPLICATIONS and _top(a) != _top(b))
    assert crossing == []


def test_no_imports_form_a_circle(graph):
    # Depth-first search with colours: meeting a module still on the path closes a circle.
    on_path, done, circles = [], set(), []

    def visit(name):
        on_path.append(name)
        for target in sorted(graph[name]):
            if target in on_path:
                circles.append(on_path[on_path.index(target):] + [target])
            elif target not in done:
                visit(target)
        on_path.pop()
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name)
    assert circles == []


def test_the_checks_see_imports_of_every_kind(tmp_path):
    """The reader itself: relative, absolute and in-function imports count; TYPE_CHECKING ones do not."""
    modules = {"latentsync.a": tmp_path / "a.py", "latentsync.b": tmp_path / "b.py", "latentsync.c": tmp_path / "c.py",
               "latentsync.pkg": tmp_path / "pkg" / "__init__.py", "latentsync.pkg.d": tmp_path / "pkg" / "d.py"}
    source = tmp_path / "a.py"
    source.write_text("from typing import TYPE_CHECKING\nfrom . import b\nif TYPE_CHECKING:\n    from .c import X\n"
                      "def f():\n    import latentsync.pkg.d\n    from .pkg import thing\n")
    assert _imports("latentsync.a", source, modules) == {"latentsync.b", "latentsync.pkg", "latentsync.pkg.d"}
