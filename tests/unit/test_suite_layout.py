"""The suite's own layout: test directories are not packages, so pytest imports each test
module by its basename, and two modules of one name cannot be collected in one run."""

import re
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []


def test_no_test_module_imports_a_conftest() -> None:
    # `from conftest import x` gets whichever directory's conftest.py a run imported first:
    # it passes alone and fails in the full run. Shared code lives in a *kit.py of its own.
    statement = re.compile(r"^\s*(from conftest import|import conftest\b)", re.MULTILINE)
    importing = [
        str(p.relative_to(TESTS)) for p in TESTS.rglob("*.py") if statement.search(p.read_text())
    ]
    assert importing == []
