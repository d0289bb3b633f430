"""The package boundaries the brief sets: the library imports neither the ingestion package
nor the web app, only the CLI imports click and only webapp/ imports Flask."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    """Top-level module names imported anywhere in the file (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offenders(package: str, forbidden: tuple[str, ...], allowed_under: str | None = None) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if allowed_under and rel.startswith(allowed_under):
            continue
        for name in _imports(path):
            if name.split(".")[0] in forbidden:
                bad.append(f"{rel} imports {name}")
    return bad


def test_library_stands_alone():
    assert _offenders("shopsearch", ("indexer", "webapp", "flask", "click")) == []


def test_click_only_in_the_cli_and_flask_only_in_webapp():
    assert _offenders("indexer", ("flask", "webapp"), allowed_under="indexer/cli/") == []
    assert _offenders("indexer", ("click",), allowed_under="indexer/cli/") == []
    assert _offenders("webapp", ("click", "indexer")) == []


def test_the_check_sees_lazy_imports(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from indexer.build import IndexBuilder\n    import flask\n")
    assert {"indexer.build", "flask"} <= _imports(p)
