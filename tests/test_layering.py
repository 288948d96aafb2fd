"""The shape of the package: the library never imports the application, ``stbp.data`` never
imports the config, no module imports another's private names, no import cycles, no module over
~500 lines and no function over ~80 in the application. Read from the source (``ast``)."""

from __future__ import annotations

import ast
from pathlib import Path

import stbp

SRC = Path(stbp.__file__).parent

#: the application: trainer, evaluation, reproduce, detect, plots, export glue, CLI, config
APP = {"stbp.cli", "stbp.config", "stbp.train", "stbp.runs", "stbp.reproduce", "stbp.analyses",
       "stbp.report", "stbp.detect", "stbp.plots", "stbp.export", "stbp.distributed", "stbp.malloc",
       "stbp.budget", "stbp.runlock", "stbp.pretrained"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, *, top_level_only: bool = False) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every stbp import in ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("stbp")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stbp"):
            names = [a.name for a in node.names]
            subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
            out += [(node.module, [n for n in names if f"{node.module}.{n}" not in MODULES])]
            out += [(s, []) for s in subs]
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m, top_level_only=top_level_only) if t in MODULES and t != m}
            for m in MODULES}


def test_the_library_never_imports_the_application():
    bad = [(m, t) for m in MODULES if m not in APP and m != "stbp"
           for t, _ in _imports(m) if t in APP]
    assert not bad, f"library modules import the application: {bad}"


def test_data_never_imports_config_trainer_cli_or_plots():
    bad = [(m, t) for m in MODULES if m.startswith("stbp.data")
           for t, _ in _imports(m) if t in APP]
    assert not bad, bad


def test_no_private_names_across_modules():
    bad = [(m, t, n) for m in MODULES for t, names in _imports(m) for n in names
           if n.startswith("_") and not n.startswith("__") and t != m]
    assert not bad, f"import a public name instead: {bad}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    # a package imports its submodules (stbp.data -> stbp.data.mnist -> stbp.data.registry,
    # which Python loads as stbp.data's child): edges to a parent package are not cycles
    def strip(graph):
        return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}

    assert _cycle(strip(_graph(top_level_only=True))) is None
    app_and_data = {m: ts for m, ts in strip(_graph(top_level_only=False)).items()
}
    graph = {m: {t for t in ts if t in app_and_data} for m, ts in app_and_data.items()}
    assert _cycle(graph) is None, "lazy imports count too outside the engine"


def test_module_and_function_sizes():
    long_modules = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 520}
    assert not long_modules, long_modules
    long_functions = []  # argparse's _parser (a list of flags) aside
    for m in MODULES:
        for node in ast.walk(ast.parse(MODULES[m].read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 85 and not node.name.startswith("_parser"):
                    long_functions.append((m, node.name, n))
    assert not long_functions, long_functions
