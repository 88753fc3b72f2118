"""Typing of the extension: ``_core.pyi`` names exactly what ``deadspec._core`` exports, and the
stub and the ``py.typed`` marker ship beside the imported package."""

from __future__ import annotations

import ast
from pathlib import Path

import deadspec
from deadspec import _core

PACKAGE = Path(deadspec.__file__).resolve().parent
STUB = PACKAGE / "_core.pyi"


def _is_private(name: str) -> bool:
    """A stub-only helper (``_Capsule``): one leading underscore, not a dunder."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _stub_names(source: str) -> dict[str, set[str] | None]:
    """Top-level names the stub defines; for a class, the names its body defines."""
    names: dict[str, set[str] | None] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = None
        elif isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            names[node.name] = members
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = None
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = None
    return {k: v for k, v in names.items() if not _is_private(k)}


def _mismatches(source: str, module=_core) -> list[str]:
    """Every disagreement between a stub's source and the module, as readable lines."""
    stub = _stub_names(source)
    public = {n for n in dir(module) if not n.startswith("__")}
    out = [f"{n}: exported by _core, missing from the stub" for n in sorted(public - set(stub))]
    out += [f"{n}: in the stub, not in _core" for n in sorted(set(stub)) if not hasattr(module, n)]
    for name, members in sorted(stub.items()):
        if members is None or not hasattr(module, name):
            continue
        runtime = {m for m in vars(getattr(module, name)) if not m.startswith("_")}
        declared = {m for m in members if not m.startswith("_")}
        out += [f"{name}.{m}: missing from the stub" for m in sorted(runtime - declared)]
        out += [f"{name}.{m}: in the stub, not in _core" for m in sorted(declared - runtime)]
    return out


def test_stub_matches_the_extension():
    assert _mismatches(STUB.read_text(encoding="utf-8")) == []


def test_the_check_sees_a_name_missing_from_either_side():
    source = STUB.read_text(encoding="utf-8")
    assert "def ddc_gauge_dots(" in source
    without = source.replace("def ddc_gauge_dots(", "def _ddc_gauge_dots_removed(")
    assert _mismatches(without) == ["ddc_gauge_dots: exported by _core, missing from the stub"]
    extra = source + "\ndef not_exported() -> None: ...\n"
    assert _mismatches(extra) == ["not_exported: in the stub, not in _core"]
    member = source.replace("    def merge(", "    def merged(")
    assert _mismatches(member) == [
        "GramAccumulator.merge: missing from the stub",
        "GramAccumulator.merged: in the stub, not in _core",
    ]


def test_stub_and_marker_ship_beside_the_package():
    init = Path(deadspec.__file__).resolve()
    assert init.name == "__init__.py"
    assert (init.parent / "py.typed").is_file()
    assert (init.parent / "_core.pyi").is_file()
    # the stub describes the extension that is actually imported from that folder
    assert Path(_core.__file__).resolve().parent == init.parent
