"""The import map of DESIGN.md section 2, enforced on every source file of every package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MOA_PACKAGES = {"moa_plan", "moa_kernels", "moa_runtime", "moa_profiler", "moa_optimizer", "moa"}

# Which moa packages each may import, and which heavy third-party libraries it must never import.
ALLOWED_MOA = {
    "moa_plan": set(),
    "moa_kernels": set(),
    "moa_runtime": {"moa_plan", "moa_kernels"},
    "moa_profiler": {"moa_plan"},
    "moa_optimizer": {"moa_plan"},
    "moa": MOA_PACKAGES,
}
FORBIDDEN_LIBS = {
    "moa_plan": {"torch", "transformers", "ortools", "triton", "polars"},
    "moa_kernels": {"transformers", "ortools", "polars"},
    "moa_runtime": {"ortools"},
    "moa_profiler": {"ortools"},
    "moa_optimizer": {"torch", "transformers", "triton", "tokenizers"},
    "moa": set(),
}
DIST = {
    "moa_plan": "moa-plan",
    "moa_kernels": "moa-kernels",
    "moa_runtime": "moa-runtime",
    "moa_profiler": "moa-profiler",
    "moa_optimizer": "moa-optimizer",
    "moa": "moa",
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(ALLOWED_MOA))
def test_package_imports_follow_the_map(package: str) -> None:
    src = ROOT / "packages" / DIST[package] / "src" / package
    files = sorted(src.rglob("*.py"))
    assert files, f"no sources under {src}"
    bad = []
    for path in files:
        roots = imported_roots(path)
        for name in roots & (MOA_PACKAGES - {package} - ALLOWED_MOA[package]):
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
        for name in roots & FORBIDDEN_LIBS[package]:
            bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "import map of DESIGN.md section 2 broken:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("package", "absent"),
    [("moa_plan", "torch"), ("moa_optimizer", "torch"), ("moa_kernels", "triton"), ("moa_plan", "transformers")],
)
def test_import_is_light(package: str, absent: str) -> None:
    code = f"import sys, {package}; sys.exit(1 if {absent!r} in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing {package} imported {absent} {result.stderr}"
