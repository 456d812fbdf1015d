"""The suite's own rules (tests/conftest.py): shared helpers, and lab tests marked.

A test module that imports another test module drags that module's tests
and fixtures along and hides which code is shared; a module that builds labs
without the `lab` marker breaks `pytest -m "not lab"` for ordinary users.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent
LAB_USES = ("novacron.simulations.lab", "tests.lab_vms")  # imports that mean root and a lab


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative ones resolved within tests)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(("tests." if node.level else "") + node.module)
    return names


def test_no_test_module_imports_another() -> None:
    offenders = {
        path.name: sorted(name for name in imported_modules(path) if name.startswith("tests.test_"))
        for path in sorted(TESTS.glob("test_*.py"))
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_modules_that_use_the_lab_are_marked_lab() -> None:
    unmarked = [
        path.name
        for path in sorted(TESTS.glob("test_*.py"))
        if any(name.startswith(LAB_USES) for name in imported_modules(path))
        and "pytestmark = pytest.mark.lab" not in path.read_text()
    ]
    assert unmarked == []
