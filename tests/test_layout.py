"""The package's import graph, read with ``ast`` (nothing is imported).

* No import cycle among ddmetrics modules: no module A imports B while B (transitively) imports A.
* No private name (leading underscore) imported across packages: a private name is used only in
  its own folder; a private module only in its own folder, except top-level private modules
  (``ddmetrics._io``), which any ddmetrics module may use.
* Every ``ddmetrics`` import in the package, ``tests/``, ``benchmarks/`` and ``examples/`` names
  an existing module, and ``from M import N`` a submodule of ``M`` or a name that ``M`` binds.

How imports become edges of the graph
-------------------------------------
Every ``import`` statement counts, at module level and inside functions and methods (a lazy
import is still a dependency); only ``if TYPE_CHECKING:`` blocks are skipped (never run).
``from X import Y`` is an edge to the module ``X.Y`` when that is a module file or package,
else to ``X``; ``import X.Y`` is an edge to ``X.Y``. Package ``__init__`` files are modules
like any other. Importing ``X.Y`` also runs the ``__init__`` of each package above it, so
there are edges to those packages too, except to the importing module's own enclosing
packages: Python has already started running those before the module runs (so a submodule's
``from .. import sibling`` is an edge to ``sibling``, not to the parent's ``__init__``). An
explicit import of a name from an enclosing package (``from .. import SomeName``) is an edge
to that ``__init__``: it needs the parent to have run that far.
"""
from __future__ import annotations

import ast
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "ddmetrics"
OTHER_TREES = ["tests", "benchmarks", "examples"]


@dataclass(frozen=True)
class Import:
    """One imported thing: ``target`` is the module it resolves to, ``name`` the attribute
    imported from it (``None`` when the module itself is imported), ``where`` ``path:line``,
    ``text`` the statement."""
    importer: str
    target: str
    name: Optional[str]
    where: str
    text: str


class Tree:
    """The modules of one package below ``root`` (``root/<package>/...``)."""

    def __init__(self, root: str, package: str = PACKAGE):
        self.root, self.package = root, package
        self.files: Dict[str, str] = {}  # module name -> file
        for folder, dirs, names in os.walk(os.path.join(root, package)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            for name in sorted(names):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, root)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts.pop()
                    self.files[".".join(parts)] = path
        self._trees: Dict[str, ast.Module] = {}

    def is_module(self, name: str) -> bool:
        return name in self.files

    def is_package(self, name: str) -> bool:
        return name in self.files and os.path.basename(self.files[name]) == "__init__.py"

    def folder(self, module: str) -> str:
        """The package a module's file lies in (a package's ``__init__`` lies in the package)."""
        return module if self.is_package(module) else module.rpartition(".")[0]

    def ast(self, path: str) -> ast.Module:
        if path not in self._trees:
            with open(path, encoding="utf-8") as fh:
                self._trees[path] = ast.parse(fh.read(), filename=path)
        return self._trees[path]

    def bound_names(self, module: str) -> Tuple[Set[str], bool]:
        """Names ``module`` binds at module level (and whether it has a PEP 562 ``__getattr__``,
        in which case its ``__all__`` counts as bound)."""
        names: Set[str] = set()
        exported: Set[str] = set()
        for node in _module_level(self.ast(self.files[module]).body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Name):
                            names.add(sub.id)
                    if isinstance(target, ast.Name) and target.id == "__all__" and node.value is not None:
                        exported |= {sub.value for sub in ast.walk(node.value)
                                     if isinstance(sub, ast.Constant) and isinstance(sub.value, str)}
        lazy = "__getattr__" in names
        return (names | exported if lazy else names), lazy

    def imports(self, path: str, importer: Optional[str]) -> Iterator[Import]:
        """Every ddmetrics import in the file ``path`` (``importer``: its module name when it is
        part of the package, for relative imports; ``None`` for a script or a test)."""
        rel = os.path.relpath(path, self.root)
        for node in _runtime_nodes(self.ast(path)):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            text = " ".join((ast.get_source_segment(_source(path), node) or "").split())
            where = f"{rel}:{node.lineno}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _in_package(alias.name, self.package):
                        yield Import(importer or rel, alias.name, None, where, text)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    if importer is None:
                        continue  # a relative import in tests/ is about tests/
                    base = self.folder(importer).split(".")
                    base = base[:len(base) - (node.level - 1)]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                if not _in_package(origin, self.package):
                    continue
                for alias in node.names:
                    sub = f"{origin}.{alias.name}"
                    if alias.name != "*" and self.is_module(sub):
                        yield Import(importer or rel, sub, None, where, text)
                    else:
                        yield Import(importer or rel, origin, alias.name, where, text)

    def package_imports(self) -> Iterator[Import]:
        for module, path in self.files.items():
            yield from self.imports(path, module)

    def graph(self) -> Dict[str, Dict[str, Import]]:
        """module -> {imported module: the first import statement that makes the edge}."""
        edges: Dict[str, Dict[str, Import]] = defaultdict(dict)
        for imp in self.package_imports():
            if not self.is_module(imp.target):
                continue  # reported by test_every_ddmetrics_import_resolves
            own = _ancestors(imp.importer)
            targets = [imp.target] + [p for p in _ancestors(imp.target) if p not in own and p != imp.importer]
            for target in targets:
                if target != imp.importer:
                    edges[imp.importer].setdefault(target, imp)
        return edges


_SOURCES: Dict[str, str] = {}


def _source(path: str) -> str:
    if path not in _SOURCES:
        with open(path, encoding="utf-8") as fh:
            _SOURCES[path] = fh.read()
    return _SOURCES[path]


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _ancestors(module: str) -> List[str]:
    """``a.b.c`` -> ``["a.b", "a"]``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:`` (their ``else`` is kept)."""
    yield node
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children = node.orelse
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _runtime_nodes(child)


def _module_level(body: List[ast.stmt]) -> Iterator[ast.stmt]:
    """Module-level statements, including those inside top-level ``if``/``try``/``with`` blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _module_level(node.orelse)
        elif isinstance(node, (ast.If, ast.With, ast.For, ast.While)):
            yield from _module_level(node.body)
            yield from _module_level(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            for block in [node.body, node.orelse, node.finalbody] + [h.body for h in node.handlers]:
                yield from _module_level(block)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# ---------------------------------------------------------------------------- the three checks

def find_cycles(tree: Tree) -> List[str]:
    """One line per strongly connected component of the import graph: a cycle through it, with
    the statement behind every edge."""
    edges = tree.graph()
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(tree.files):
        if module not in index:
            strongconnect(module)

    lines = []
    for component in components:
        members = set(component)
        start = component[0]
        # shortest path start -> ... -> start inside the component
        parents: Dict[str, str] = {}
        frontier, seen, end = [start], {start}, None
        while frontier and end is None:
            nxt = []
            for v in frontier:
                for w in sorted(edges.get(v, {})):
                    if w == start:
                        end = v
                        break
                    if w in members and w not in seen:
                        seen.add(w)
                        parents[w] = v
                        nxt.append(w)
                if end is not None:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(parents[path[-1]])
        path.reverse()
        path.append(start)
        steps = [f"{a} -> {b}  [{edges[a][b].where}: {edges[a][b].text}]" for a, b in zip(path, path[1:])]
        others = f" (component of {len(component)}: {', '.join(component)})" if len(component) > len(path) - 1 else ""
        lines.append("cycle" + others + ":\n    " + "\n    ".join(steps))
    return lines


def find_private_imports(tree: Tree) -> List[str]:
    """Private names used outside their folder, private modules outside theirs (top-level
    private modules excepted)."""
    found = []
    for imp in tree.package_imports():
        if not tree.is_module(imp.target):
            continue
        home = tree.folder(imp.importer)
        parts = imp.target.split(".")
        for i, part in enumerate(parts):  # private modules on the path
            if _is_private(part):
                module, parent = ".".join(parts[:i + 1]), ".".join(parts[:i])
                if parent not in (home, tree.package):
                    found.append(f"{imp.where}: {imp.importer} imports private module {module} "
                                 f"of {parent}: {imp.text}")
                    break
        if imp.name is not None and _is_private(imp.name) and tree.folder(imp.target) != home:
            found.append(f"{imp.where}: {imp.importer} imports private name {imp.name} "
                         f"from {imp.target} (package {tree.folder(imp.target)}): {imp.text}")
    return found


def find_unresolved(tree: Tree, trees: List[str]) -> List[str]:
    """ddmetrics imports, in the package and in the given folders, of missing modules or names."""
    sources = [(path, module) for module, path in tree.files.items()]
    for top in trees:
        for folder, dirs, names in os.walk(os.path.join(tree.root, top)):
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__pycache__")))
            sources += [(os.path.join(folder, n), None) for n in sorted(names) if n.endswith(".py")]
    found = []
    for path, module in sources:
        for imp in tree.imports(path, module):
            if not tree.is_module(imp.target):
                found.append(f"{imp.where}: no module {imp.target}: {imp.text}")
            elif imp.name is not None and imp.name != "*" and imp.name not in tree.bound_names(imp.target)[0]:
                found.append(f"{imp.where}: {imp.target} has no submodule or name {imp.name}: {imp.text}")
    return found


# ---------------------------------------------------------------------------- tests on this repo

@pytest.fixture(scope="module")
def tree() -> Tree:
    return Tree(ROOT)


def test_no_import_cycles(tree):
    cycles = find_cycles(tree)
    assert not cycles, "import cycles among ddmetrics modules:\n" + "\n".join(cycles)


def test_no_private_imports_across_packages(tree):
    found = find_private_imports(tree)
    assert not found, "private names or modules imported from another package:\n" + "\n".join(found)


def test_every_ddmetrics_import_resolves(tree):
    found = find_unresolved(tree, OTHER_TREES)
    assert not found, "imports of ddmetrics modules or names that do not exist:\n" + "\n".join(found)


# ---------------------------------------------------------------------------- the checks themselves

def _write(root, files: Dict[str, str]) -> Tree:
    for rel, text in files.items():
        path = os.path.join(str(root), "pkg", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return Tree(str(root), package="pkg")


def test_a_parent_import_of_a_sibling_is_no_cycle(tmp_path):
    tree = _write(tmp_path, {
        "__init__.py": "from . import a, sub\nfrom .sub import f\n",
        "a.py": "X = 1\n",
        "_io.py": "def write(): pass\n",
        "sub/__init__.py": "from .x import f\n",
        "sub/x.py": "from .. import a\nfrom .._io import write\nfrom . import _y\n\ndef f():\n    from ..a import X\n",
        "sub/_y.py": "",
    })
    assert find_cycles(tree) == []
    assert find_private_imports(tree) == []
    assert find_unresolved(tree, []) == []


def test_cycles_are_found_through_functions_and_package_inits(tmp_path):
    tree = _write(tmp_path, {
        "__init__.py": "from .a import A\n",
        "a.py": "A = 1\n\ndef g():\n    from .sub.x import f\n",  # lazy, still an edge
        "sub/__init__.py": "from .x import f\n",
        "sub/x.py": "def f():\n    pass\n",
        "b.py": "from .sub import f\n",  # b -> sub (the __init__) -> sub.x -> ... no way back: fine
        "c.py": "from . import A\n",  # a name from the top __init__, which imports a, not c: fine
        "d.py": "import typing\nif typing.TYPE_CHECKING:\n    from .e import E\nD = 1\n",
        "e.py": "from .d import D\nE = 2\n",  # d -> e only under TYPE_CHECKING: no cycle
    })
    assert find_cycles(tree) == []
    # now sub.x needs the top package's name A: pkg -> a -> sub.x -> pkg (the __init__)
    with open(os.path.join(str(tmp_path), "pkg", "sub", "x.py"), "a", encoding="utf-8") as fh:
        fh.write("from .. import A\n")
    tree = Tree(str(tmp_path), package="pkg")
    (cycle,) = find_cycles(tree)
    assert "pkg -> pkg.a" in cycle and "pkg.a -> pkg.sub.x" in cycle and "pkg.sub.x -> pkg  [" in cycle
    assert "pkg/a.py:4: from .sub.x import f" in cycle


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    # b imports sub.x, which runs sub/__init__, which imports sub.y, which imports b
    tree = _write(tmp_path, {
        "__init__.py": "",
        "b.py": "from .sub.x import f\n",
        "sub/__init__.py": "from . import y\n",
        "sub/x.py": "def f(): pass\n",
        "sub/y.py": "from .. import b\n",
    })
    (cycle,) = find_cycles(tree)
    assert "pkg.b -> pkg.sub  [" in cycle and "pkg.sub -> pkg.sub.y" in cycle and "pkg.sub.y -> pkg.b" in cycle


def test_private_imports_across_packages_are_found(tmp_path):
    tree = _write(tmp_path, {
        "__init__.py": "",
        "top.py": "from .sub.base import _helper\nfrom .sub._impl import thing\nimport pkg.sub._impl\n",
        "sub/__init__.py": "from .base import _helper\nfrom ._impl import thing\n",
        "sub/base.py": "def _helper(): pass\n",
        "sub/_impl.py": "from .base import _helper\nthing = 1\n",
    })
    found = find_private_imports(tree)
    assert len(found) == 3, found
    assert found[0].startswith("pkg/top.py:1: pkg.top imports private name _helper from pkg.sub.base")
    assert "private module pkg.sub._impl of pkg.sub" in found[1] and "pkg/top.py:2" in found[1]
    assert "pkg/top.py:3" in found[2]


def test_stale_imports_are_found(tmp_path):
    tree = _write(tmp_path, {
        "__init__.py": "from .a import A\n__all__ = ['A', 'lazy']\n\ndef __getattr__(name):\n    pass\n",
        "a.py": "A = 1\ntry:\n    import numpy as np\nexcept ImportError:\n    np = None\n",
    })
    os.makedirs(tmp_path / "tests")
    (tmp_path / "tests" / "test_x.py").write_text(
        "import pkg.a\nfrom pkg import lazy, A, a\nfrom pkg.a import np\nfrom pkg.gone import A\n"
        "from pkg.a import B\nimport pkg.old.a\nfrom . import helper\n")
    found = find_unresolved(tree, ["tests"])
    assert [f.split(": ", 1)[0] for f in found] == ["tests/test_x.py:4", "tests/test_x.py:5", "tests/test_x.py:6"]


#: what a reference outside this repository looks like in a docstring or comment: the design notes
#: and papers it was built from live beside the repo, not in it, and absolute paths are this machine's
OUTSIDE_REFERENCES = ("DESIGN.md", "shared/papers", "../shared", "/work/")


def _python_files(*folders: str) -> Iterator[str]:
    for folder in folders:
        for base, dirs, files in os.walk(os.path.join(ROOT, folder)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            yield from (os.path.join(base, f) for f in files if f.endswith(".py"))


def test_sources_point_only_at_things_in_the_repo():
    # this file names the patterns, so it is the one file not scanned
    own = os.path.abspath(__file__)
    found = [f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}"
             for path in _python_files("ddmetrics", "benchmarks", "examples", "tests") if path != own
             for i, line in enumerate(_source(path).splitlines(), 1)
             if any(ref in line for ref in OUTSIDE_REFERENCES)]
    assert not found, "references to files outside the repository:\n" + "\n".join(found)
