"""Every script under benchmarks/ says in its first line which question it answers (its module
docstring's first line is a question; common.py, the scripts' shared helpers, is no benchmark)."""

from __future__ import annotations

import ast

import pytest
from fixtures import REPO

SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.name != "common.py")


def test_there_are_benchmarks():
    assert len(SCRIPTS) > 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_opens_with_its_question(script):
    doc = ast.get_docstring(ast.parse(script.read_text()))
    assert doc, f"{script.name} has no module docstring"
    first = doc.splitlines()[0]
    assert "?" in first, f"{script.name}'s first line asks nothing: {first!r}"
