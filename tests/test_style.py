"""Rules of the code itself, checked over the tree.

No module reaches into another module's private names: ``obj._name``, where
``obj`` is not ``self`` or ``cls`` and ``_name`` is not defined in the same
file, and ``from module import _name``. What another module calls private can
change under its users without warning; a name that others need is public.
Today's offenders are listed below, each with the reason or the issue that
will remove it; a new one fails, and so does an entry that no longer
offends (take it off the list).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("hub", "clients", "bench", "tests", "fuzzing")
GENERATED = (ROOT / "hub" / "proto",)

# (file, expression) -> why it is allowed for now.
KNOWN: dict[tuple[str, str], str] = {
    # Third-party and standard-library internals, with no public way in.
    ("clients/py_cli/terminal.py", "processor._call_handler"): (
        "prompt_toolkit offers no hook around a key binding's handler; its own bindings are "
        "in Application._default_bindings, out of reach of the public key_bindings"
    ),
}


def python_files() -> list[Path]:
    files = [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    return [p for p in files if not any(p.is_relative_to(g) for g in GENERATED)]


def own_private_names(tree: ast.Module) -> set[str]:
    """The private names a file defines: at module level, in a class body, or
    as an attribute of ``self``/``cls``."""
    names: set[str] = set()

    def targets(node: ast.AST) -> list[ast.expr]:
        if isinstance(node, ast.Assign):
            return node.targets
        if isinstance(node, ast.AnnAssign | ast.AugAssign):
            return [node.target]
        return []

    def define(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            for target in targets(node):
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names.add(leaf.id)
            if isinstance(node, ast.ClassDef):
                define(node.body)

    define(tree.body)
    for node in ast.walk(tree):
        for target in targets(node):
            for leaf in ast.walk(target):
                if (
                    isinstance(leaf, ast.Attribute)
                    and isinstance(leaf.value, ast.Name)
                    and leaf.value.id in ("self", "cls")
                ):
                    names.add(leaf.attr)
    return {n for n in names if is_private(n)}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def reaches(source: str) -> set[str]:
    """Each place in a module's ``source`` that uses another module's private name."""
    tree = ast.parse(source)
    own = own_private_names(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in own:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.add(ast.unparse(node))
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            found.update(
                f"from {node.module} import {a.name}" for a in node.names if is_private(a.name)
            )
    return found


def test_no_module_reaches_into_another_modules_private_names() -> None:
    offences = {
        (path.relative_to(ROOT).as_posix(), expr)
        for path in python_files()
        for expr in reaches(path.read_text(encoding="utf-8"))
    }
    assert sorted(offences - KNOWN.keys()) == [], "use or make a public name instead"
    assert sorted(KNOWN.keys() - offences) == [], "no longer offends: take it off KNOWN"


def test_the_rule_sees_a_reach_and_lets_own_names_be() -> None:
    source = (
        "import m\n"
        "from m import _hidden\n"
        "class A:\n"
        "    _table = {}\n"
        "    def __init__(self):\n"
        "        self._state = 1\n"
        "def f(a, other):\n"
        "    return a._state, A._table, other._peek, m._x, a.__class__\n"
    )
    assert reaches(source) == {"other._peek", "m._x", "from m import _hidden"}
