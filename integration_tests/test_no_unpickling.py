"""No code path unpickles anything, and remote code is never trusted by default."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "packages").glob("*/src/**/*.py")) + sorted((ROOT / "tools").glob("*.py"))


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    if isinstance(func, ast.Name):
        return func.id
    return "?"


def test_sources_exist() -> None:
    assert len(SOURCES) > 20


def test_no_pickle_imports() -> None:
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad += [
                f"{path.relative_to(ROOT)}: imports {n}"
                for n in names
                if n.split(".")[0] in {"pickle", "dill", "cloudpickle", "joblib"}
            ]
    assert not bad, "\n".join(bad)


def test_torch_load_only_with_weights_only() -> None:
    bad = []
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
            name = _name(call.func)
            if name.endswith("torch.load"):
                ok = any(
                    k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                    for k in call.keywords
                )
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno}: torch.load without weights_only=True")
            if name.endswith(("numpy.load", "np.load")):
                ok = not any(
                    k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                    for k in call.keywords
                )
                if not ok:
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno}: np.load with allow_pickle")
    assert not bad, "\n".join(bad)


def test_trust_remote_code_never_on_by_default() -> None:
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree):
            for k in call.keywords:
                if k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is True:
                    bad.append(f"{path.relative_to(ROOT)}:{call.lineno}: trust_remote_code=True")
        for node in ast.walk(tree):
            # A click option or function default that turns it on.
            if isinstance(node, ast.arguments):
                for arg, default in zip(node.args[::-1], node.defaults[::-1], strict=False):
                    if arg.arg == "trust_remote_code" and isinstance(default, ast.Constant) and default.value is True:
                        bad.append(f"{path.relative_to(ROOT)}: trust_remote_code defaults to True")
    assert not bad, "\n".join(bad)
