"""The house rules a reader can check without running anything (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "smtpfront"
LIMIT = 500


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_over_500_lines_says_why_in_its_docstring(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines <= LIMIT:
        return
    docstring = ast.get_docstring(ast.parse(text)) or ""
    reason = [line for line in docstring.splitlines() if line.startswith("Size (")]
    assert reason, f"{path.name} has {lines} lines and no 'Size (…)' paragraph in its docstring saying why"
