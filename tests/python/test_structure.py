"""The house rules, enforced: lint, file and function sizes, private names across modules.

- ruff (the rule set in pyproject.toml) is clean on ``python/``, ``tests/`` and ``bench/``;
- no Python file of the package over 1,000 lines, no C++ source over 800 lines;
- no function body in the package over 100 lines;
- no private name (``_x``) imported from, or reached through, another module of the package,
  except private *modules* themselves (``deadspec._engine``, ``deadspec.experiments._lm``):
  private helpers live in private modules;
- no ``matplotlib.use`` in library code (plots draw on their own Agg canvas).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "python" / "deadspec"
MAX_PY_LINES = 1000
MAX_CPP_LINES = 800
MAX_BODY_LINES = 100


def _py_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _is_module(dotted: str) -> bool:
    """Whether ``deadspec.a.b`` is a module or package of the source tree (or the extension)."""
    rel = Path(*dotted.split(".")[1:])
    base = PACKAGE / rel
    return (
        base.with_suffix(".py").is_file()
        or (base / "__init__.py").is_file()
        or dotted == "deadspec._core"
    )


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        if isinstance(first.value.value, str):
            if len(body) == 1:
                return 0
            first = body[1]
    return node.end_lineno - first.lineno + 1


def private_reaches(path: Path) -> list[str]:
    """``file:line name`` for each private name taken from another package module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: dict[str, str] = {}  # local name -> deadspec module it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("deadspec"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "deadspec"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deadspec"):
            for a in node.names:
                dotted = f"{node.module}.{a.name}"
                if _is_module(dotted):
                    aliases[a.asname or a.name] = dotted
                elif _is_private(a.name):
                    found.append(f"{path.name}:{node.lineno} imports {a.name} from {node.module}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and not _is_module(f"{aliases[node.value.id]}.{node.attr}")
        ):
            found.append(f"{path.name}:{node.lineno} reaches {node.value.id}.{node.attr}")
    return found


def test_ruff_is_clean():
    try:
        import ruff  # noqa: F401 - the linter is a test dependency
    except ImportError:
        pytest.fail("ruff is a test dependency: pip install '.[test]'")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "python", "tests", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_python_files_are_small():
    big = {
        str(p.relative_to(ROOT)): n
        for p in _py_files()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_PY_LINES
    }
    assert not big, f"Python files over {MAX_PY_LINES} lines: {big}"


def test_cpp_sources_are_small():
    files = [
        p
        for folder in (ROOT / "cpp", ROOT / "python" / "src", ROOT / "examples")
        for p in folder.rglob("*")
        if p.suffix in (".cpp", ".hpp", ".h", ".cu", ".cuh")
    ]
    assert files
    big = {
        str(p.relative_to(ROOT)): n
        for p in files
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_CPP_LINES
    }
    assert not big, f"C++ sources over {MAX_CPP_LINES} lines: {big}"


def test_functions_are_short():
    long = []
    for path in _py_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _body_lines(node)
                if n > MAX_BODY_LINES:
                    long.append(f"{_module_name(path)}.{node.name}: {n}")
    assert not long, f"function bodies over {MAX_BODY_LINES} lines: {long}"


def test_no_private_name_crosses_modules():
    found = [hit for path in _py_files() for hit in private_reaches(path)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_private_name_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from deadspec.reading import _hidden\n"
        "import deadspec.optim as O\n"
        "from deadspec import _engine\n"
        "x = O._secret\n"
        "y = _engine.collect\n",
        encoding="utf-8",
    )
    hits = private_reaches(bad)
    assert len(hits) == 2 and "_hidden" in hits[0] and "O._secret" in hits[1]


def test_no_matplotlib_use_in_library():
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in _py_files()
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "matplotlib.use(" in line or "import matplotlib.pyplot" in line
    ]
    assert not hits, f"process-wide matplotlib state changed in library code: {hits}"
