"""The package layout is the pipeline: each layer of app/ imports only the layers below it, and no project
module imports itself back through another. Read from the source with ast, lazy imports included."""

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("app", "ingest", "evals", "training", "bench")
# app's layers, lowest first; a module may import its own layer and those below it.
LAYERS = {
    "app.errors": 0,
    "app.schemas": 0,
    "app.settings": 0,
    "app.store": 1,
    "app.qa": 2,
    "app.briefing": 3,
    "app.web": 4,
    "app.cli": 5,
}


def modules() -> dict[str, Path]:
    """Every project module by dotted name (packages' __init__ files included)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports anywhere in it, a `from package import module` as that module."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{alias.name}" for alias in node.names} & known.keys()
            out.update(subs or {node.module})
    return {name for name in out if name in known}


def layer(module: str) -> int | None:
    return next(
        (n for prefix, n in LAYERS.items() if module == prefix or module.startswith(prefix + ".")), None
    )


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) for name, path in known.items()}


def layer_breaks(edges: dict[str, set[str]]) -> list[str]:
    """Each import that reaches up a layer of app/, or from app/ into training/, or from ingest/ above store."""
    out = []
    for source, targets in edges.items():
        for target in targets:
            upward = layer(source) is not None and layer(target) is not None and layer(target) > layer(source)
            into_training = source.startswith("app.") and target.startswith("training")
            ingest_up = source.startswith("ingest") and (layer(target) or 0) > LAYERS["app.store"]
            if upward or into_training or ingest_up:
                out.append(f"{source} -> {target}")
    return sorted(out)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles, each as the path that closes it (depth-first search)."""
    found: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(path: list[str]) -> None:
        state[path[-1]] = "open"
        for nxt in sorted(edges.get(path[-1], ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(path + [nxt])
        state[path[-1]] = "done"

    for node in sorted(edges):
        if node not in state:
            visit([node])
    return found


def test_app_is_laid_out_as_the_pipeline():
    folders = {p.name for p in (ROOT / "app").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {"store", "qa", "briefing", "web"}
    top = {p.stem for p in (ROOT / "app").glob("*.py")} - {"__init__"}
    assert top == {"cli", "schemas", "settings", "errors"}
    assert all(layer(m) is not None for m in modules() if m.startswith("app."))


def test_no_layer_imports_upward_and_app_never_imports_training():
    assert layer_breaks(graph()) == []


def test_no_import_circle_among_project_modules():
    assert cycles(graph()) == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("app.store.index", "app.qa.retrieve"),
        ("app.qa.answer", "app.briefing.brief"),
        ("app.qa.read", "app.web.api"),
        ("app.briefing.export", "app.web.ui.chat"),
        ("app.web.api", "training.train"),
        ("ingest.build", "app.qa.answer"),
    ],
)
def test_the_check_catches_an_upward_import(source, target):
    edges = graph()
    edges[source] = edges[source] | {target}
    assert layer_breaks(edges) == [f"{source} -> {target}"]


def test_the_check_catches_a_circle():
    edges = graph()
    edges["app.store.split"] = edges["app.store.split"] | {"app.store.index"}
    assert [sorted(set(c)) for c in cycles(edges)] == [["app.store.index", "app.store.split"]]
