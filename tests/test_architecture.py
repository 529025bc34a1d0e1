"""The package's shape: imports point one way, no cycles, no private names across modules.

Every import counts: module level, inside functions, and under ``TYPE_CHECKING``. Each folder's
``__init__`` docstring says what it may import (a line ``May import: ...``); top-level modules follow
:data:`TOP_LEVEL`. A planted cycle and a planted upward import must fail the same checks.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "compressor"

# What each top-level module may import (folders and modules of the package), lowest first. The folders'
# own rules live in their docstrings, so a newcomer reads them where the code is.
TOP_LEVEL: dict[str, set[str]] = {
    "errors": set(),
    "registry": {"errors", "core", "stages"},
    "search_config": {"errors", "core", "release"},
    "recipe": {"errors", "core", "runtime", "release", "registry", "search_config"},
    "engine": {"errors", "core", "metrics", "report", "train", "runtime", "recipe", "registry"},
    "releasing": {"errors", "core", "metrics", "report", "train", "runtime", "export", "release", "registry", "recipe",
                  "engine"},
    "cli": {"*"},
}
FOLDERS = ("core", "metrics", "report", "train", "runtime", "export", "quant", "release", "stages", "search")


@dataclass(frozen=True)
class Import:
    source: str      # importing module, dotted
    target: str      # imported module, dotted (resolved to a module of the package)
    names: tuple[str, ...]
    line: int


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        name = ".".join(f.relative_to(root.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(root: Path) -> list[Import]:
    """Every import of a package module by another, wherever it stands in the file."""
    mods = modules(root)
    found = []
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                pairs = [(a.name, ()) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = tuple(a.name for a in node.names)
                # "from pkg import module" imports that module
                pairs = [(f"{base}.{n}", ()) for n in names if f"{base}.{n}" in mods]
                rest = tuple(n for n in names if f"{base}.{n}" not in mods)
                if rest or not pairs:
                    pairs.append((base, rest))
            else:
                continue
            for target, names in pairs:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    found.append(Import(mod, target, names, node.lineno))
    return found


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges: dict[str, set[str]] = {m: set() for m in modules(root)}
    for imp in imports(root):
        edges[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def allowed(root: Path) -> dict[str, set[str]]:
    """Folder or top-level module -> what it may import, from the folders' docstrings and :data:`TOP_LEVEL`."""
    rules = {name: set(deps) for name, deps in TOP_LEVEL.items()}
    for init in sorted(root.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        match = re.search(r"May import:(.*?)(?:\.\s|\.$|$)", " ".join(doc.split()))
        assert match, f"{init}: the folder's docstring must say what it may import ('May import: ...')"
        names = set(re.findall(r"``compressor\.(\w+)``", match.group(1)))
        if "every folder" in match.group(1):
            names |= set(FOLDERS) - {init.parent.name, "search"}
            names |= set(re.findall(r"``(\w+)``", match.group(1))) & set(FOLDERS)
        rules[init.parent.name] = names
    return rules


def unit(module: str) -> str:
    """The folder or top-level module a dotted module belongs to (``compressor.core.data`` -> ``core``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(root: Path) -> list[str]:
    rules = allowed(root)
    out = []
    for imp in imports(root):
        src, dst = unit(imp.source), unit(imp.target)
        where = f"{imp.source} (line {imp.line}) imports {imp.target}"
        if dst and src != dst and "*" not in rules.get(src, set()) and dst not in rules.get(src, set()):
            out.append(f"{where}: {src} may import only {sorted(rules.get(src, set()))}")
        private = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private:
            out.append(f"{where}: uses private name(s) {private} of another module")
        last = imp.target.rpartition(".")[2]
        if last.startswith("_") and not last.startswith("__") and imp.target.rpartition(".")[0] != \
                imp.source.rpartition(".")[0]:
            out.append(f"{where}: a private module is for its own folder")
        if src == dst == "stages" and not last.startswith("_") and imp.target != f"{root.name}.stages":
            out.append(f"{where}: a stage imports another stage; move the shared part into stages/_shared.py "
                       "or a library folder")
    return out


def test_no_import_cycles() -> None:
    assert cycles(PACKAGE) == []


def test_imports_point_one_way_and_private_names_stay_home() -> None:
    assert violations(PACKAGE) == []


def test_every_folder_says_what_it_may_import() -> None:
    rules = allowed(PACKAGE)
    for folder in (p.parent.name for p in PACKAGE.glob("*/__init__.py")):
        assert folder in rules
    # the layers form one order: nothing allowed both ways
    for a, deps in rules.items():
        for b in deps:
            assert a not in rules.get(b, set()), f"{a} and {b} may import each other"


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "compressor"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


LAYERS = {
    "__init__.py": "",
    "errors.py": "",
    "core/__init__.py": '"""Core.\n\nMay import: ``compressor.errors``.\n"""\n',
    "metrics/__init__.py": '"""Metrics.\n\nMay import: ``compressor.errors``, ``compressor.core``.\n"""\n',
}


def test_a_planted_cycle_is_found(tmp_path: Path) -> None:
    root = _plant(tmp_path, {**LAYERS, "core/a.py": "from compressor.core import b\n",
                             "core/b.py": "def f():\n    from compressor.core.a import x\n"})
    assert cycles(root) == [["compressor.core.a", "compressor.core.b"]]


def test_a_planted_upward_import_and_private_name_fail(tmp_path: Path) -> None:
    root = _plant(tmp_path, {**LAYERS, "metrics/m.py": "_hidden = 1\n",
                             "core/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                          "    from compressor.metrics.m import _hidden\n"})
    found = violations(root)
    assert any("core may import only" in v for v in found), found
    assert any("private name" in v for v in found), found


@pytest.mark.parametrize("stage", sorted(p.stem for p in (PACKAGE / "stages").glob("[!_]*.py")))
def test_stage_files_are_small(stage: str) -> None:
    lines = len((PACKAGE / "stages" / f"{stage}.py").read_text().splitlines())
    assert lines <= 500, f"stages/{stage}.py has {lines} lines: move library code into its folder"
