"""The core imports only the standard library and itself, and none of its I/O modules."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import smtpfront.core

CORE = Path(smtpfront.core.__file__).parent


def _forbidden() -> set[str]:
    """The one statement of the rule: pyproject.toml's "core is sans-IO" import contract."""
    project = tomllib.loads((CORE.parents[1] / "pyproject.toml").read_text())
    [contract] = [c for c in project["tool"]["importlinter"]["contracts"] if c["name"].startswith("core is sans-IO")]
    assert contract["source_modules"] == ["smtpfront.core"]
    return set(contract["forbidden_modules"])


FORBIDDEN = _forbidden()


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_only_stdlib() -> None:
    for path in sorted(CORE.glob("*.py")):
        for name in imported_modules(path):
            assert name == "__future__" or name in sys.stdlib_module_names, f"{path.name} imports {name}"
            assert name not in FORBIDDEN, f"{path.name} imports {name}: the core is sans-IO"
