"""ruff passes on the sources, the tests and the benchmarks (rules: ``[tool.ruff]`` in pyproject.toml).

The README's test command (what CI runs) runs this test, so a lint error fails CI like any other
test. ruff comes with the ``test`` extra; without it the test is skipped, never silently passed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str] | None:
    """The ruff command of this environment (the venv's first, then PATH), or None."""
    beside = Path(sys.executable).with_name("ruff")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("ruff")
    return [found] if found else None


def test_ruff_check_passes():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (it is part of the test extra: pip install -e '.[test]')")
    result = subprocess.run([*ruff, "check", "--no-cache", "src", "tests", "benchmarks"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}{result.stderr}"
