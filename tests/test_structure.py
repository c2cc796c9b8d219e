"""The shape of the codebase: no import cycle (training below the evaluation), modules and
functions of readable size, no reference to a document outside the repository, and no lab
notebook in the library's text (issue numbers, dates, hosts)."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "menet_jax"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, pathlib.Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imported(node: ast.AST, name: str, modules) -> list[str]:
    """Modules of menet_jax that an import statement inside module `name` loads by name."""
    targets = []
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            here = name.split(".") if _is_package(name, modules) else name.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join(here + ([base] if base else []))
        for alias in node.names:
            full = f"{base}.{alias.name}"
            targets.append(full if full in modules else base)
    return [t for t in targets if t in modules]


def _graph() -> dict[str, set[str]]:
    """Module -> the menet_jax modules it imports, at any depth (function-level imports count).

    Importing `a.b.c` also runs the package `a.b`, so that edge is added too, except from
    modules inside `a.b` itself: a package importing its own submodules is not a cycle.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for target in _imported(node, name, modules):
                parts = target.split(".")
                for i in range(2, len(parts)):
                    parent = ".".join(parts[:i])
                    if not (name == parent or name.startswith(parent + ".")):
                        graph[name].add(parent)
                if target != name:
                    graph[name].add(target)
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, stack = set(), []

    def visit(node):
        if node in stack:
            return stack[stack.index(node) :] + [node]
        if node in done:
            return None
        stack.append(node)
        for nxt in sorted(graph[node]):
            found = visit(nxt)
            if found:
                return found
        stack.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        found = visit(node)
        if found:
            return found
    return None


def test_import_graph_has_no_cycle():
    graph = _graph()
    assert graph["menet_jax.checkpoint"], "the import graph came out empty"
    assert "menet_jax.recipe" in graph["menet_jax.checkpoint"]
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def test_checkpoint_does_not_depend_on_training():
    assert "menet_jax.train" not in _reachable(_graph(), "menet_jax.checkpoint")


def test_training_does_not_depend_on_the_evaluation():
    """The evaluation builds on training's modules, never the reverse: `main` checks the whole
    config (training and eval sections) before calling either."""
    seen = _reachable(_graph(), "menet_jax.train")
    assert "menet_jax.defense" in seen  # the walk reached the modules training uses
    assert not {m for m in seen if m.startswith("menet_jax.evaluation")}


def test_modules_and_functions_are_of_readable_size():
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_no_reference_to_documents_outside_the_repository():
    pattern = re.compile(r"\bSPEC\b|\.\./shared|shared/SPEC|menet-supplementary")
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "configs").glob("*.py"), *ROOT.glob("*.md")]
    files += [*(ROOT / "docs").rglob("*.md"), *(ROOT / "launch").glob("*")]
    files += [p for p in (ROOT / "tests").glob("*.py") if p.name != "test_structure.py"]
    hits = []
    for path in files:
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}")
    assert not hits, hits


# What belongs in BENCHMARKS.md, RESULTS.md or the history, not in the library's text: an issue
# number, a date, the host a measurement ran on.
_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
NOTEBOOK = re.compile(
    rf"\bissues? #?\d+|\b20\d\d-\d\d(-\d\d)?\b|\b({_MONTHS}) (\d\d?, )?20\d\d\b"
    r"|\bEPYC\b|\bXeon\b|\bsandbox\b|\b\d+-core\b",
    re.IGNORECASE,
)


def _notebook_lines(text: str) -> list[str]:
    return [line.strip()[:80] for line in text.splitlines() if NOTEBOOK.search(line)]


def test_the_library_quotes_no_issue_date_or_host():
    hits = [f"{path.relative_to(ROOT)}: {line}" for path in sorted(PACKAGE.rglob("*.py"))
            for line in _notebook_lines(path.read_text())]  # fmt: skip
    assert not hits, hits


@pytest.mark.parametrize(
    "line",
    [
        'convolution about 5x (BENCHMARKS.md, "Attack loop speed (issue 9)")',
        "# see Issue #12 for the history",
        "measured on 2026-12-02 by the nightly job",
        "a read of the code, December 2026",
        "timed on the 2-core CPU sandbox (AMD EPYC)",
        "an Intel Xeon host",
    ],
)
def test_the_notebook_pattern_catches_what_it_is_for(line):
    assert _notebook_lines(line)


def test_the_notebook_pattern_spares_ordinary_text():
    text = (
        "fold_in(key, 2026) of the batch; 8-bit images; core.py; the authors' repository\n"
        "resnet18: the others 2x, 4x, 8x; a multi-core machine; issues a warning"
    )
    assert _notebook_lines(text) == []


def test_method_document_exists_and_is_cited():
    method = ROOT / "docs" / "method.md"
    assert method.is_file()
    sections = set(re.findall(r"^##+ (\d+(?:\.\d+)?)\b", method.read_text(), flags=re.M))
    cited = set()
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "configs").glob("*.py"), ROOT / "README.md"]:
        cited |= set(re.findall(r"docs/method\.md §(\d+(?:\.\d+)?)", path.read_text()))
    assert cited, "no code cites docs/method.md"
    assert cited <= sections, f"cited sections missing from docs/method.md: {cited - sections}"
