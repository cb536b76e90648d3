"""The benchmark scripts need ../shared and hours to run, so the suite does not run them; it checks that each one
still imports against the package as it is (a renamed or moved name fails here, not in the next benchmark run)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.name)
def test_benchmark_imports(script: Path):
    namespace = runpy.run_path(str(script), run_name="imported_by_the_tests")  # defines, does not run main()
    assert callable(namespace.get("main")), f"{script.name} has no main()"
