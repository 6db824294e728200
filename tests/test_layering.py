"""The layering of docs/dependencies.md, enforced: no module imports a layer above its own.

In the spirit of import-linter's "layers" contract, but read from the source
with ``ast`` (imports inside functions count too), so it needs no install
and sees the tree as ``setup.cfg``'s ``package_dir`` maps it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Source folder -> layer, most specific first (``online_tsm/training`` before ``online_tsm``).
FOLDERS = (("online_tsm/training", "training"), ("online_tsm/apps", "apps"), ("online_tsm", "core"),
           ("export", "export"), ("runtimes", "runtimes"), ("benchmarks", "benchmarks"), ("demo", "demo"))
#: Module prefix -> layer, most specific first.
MODULES = (("online_tsm.training", "training"), ("online_tsm.apps", "apps"), ("online_tsm.export", "export"),
           ("online_tsm.runtimes", "runtimes"), ("online_tsm.benchmarks", "benchmarks"),
           ("online_tsm.demo", "demo"), ("online_tsm", "core"))
#: What each layer may import besides itself (docs/dependencies.md draws the same arrows).
ALLOWED = {
    "core": set(),
    "training": {"core"},
    "runtimes": {"core"},
    "export": {"core", "training", "runtimes"},
    "benchmarks": {"core", "runtimes", "export"},
    "demo": {"core", "runtimes"},
    "apps": {"core", "training", "runtimes", "export", "benchmarks", "demo"},
}


def _layer(name: str, table: tuple[tuple[str, str], ...], sep: str) -> str | None:
    return next((layer for prefix, layer in table if name == prefix or name.startswith(prefix + sep)), None)


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from online_tsm import export`` imports the subpackage: count each name as a module too
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def layering_violations(root: Path) -> list[str]:
    """``file:line imports module (layer X may not import layer Y)`` for every import against :data:`ALLOWED`."""
    problems: dict[tuple[str, int, str], str] = {}     # one report per import statement and layer
    for folder, _ in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            source = _layer(relative, FOLDERS, "/")
            for line, module in _imported_modules(ast.parse(path.read_text(), filename=relative)):
                target = _layer(module, MODULES, ".")
                if target and target != source and target not in ALLOWED[source]:
                    problems.setdefault((relative, line, target),
                                        f"{relative}:{line} imports {module} ({source} may not import {target})")
    return sorted(problems.values())


def test_no_module_imports_a_layer_above_its_own():
    assert layering_violations(ROOT) == []


def test_runtimes_do_not_import_the_export_layer():
    hits = [p for p in (ROOT / "runtimes").rglob("*.py") if "online_tsm.export" in
            " ".join(m for _, m in _imported_modules(ast.parse(p.read_text())))]
    assert hits == []


@pytest.mark.parametrize("folder, line, layer", [
    ("runtimes", "from online_tsm.export.api import export_artifact", "export"),
    ("online_tsm", "    from online_tsm.runtimes import open_runtime", "runtimes"),
    ("online_tsm/training", "import online_tsm.benchmarks.cli", "benchmarks"),
    ("demo", "from online_tsm import export", "export"),
])
def test_a_wrong_import_is_caught(tmp_path, folder, line, layer):
    for name, _ in FOLDERS:
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    body = f"def f():\n{line}\n" if line.startswith(" ") else f"{line}\n"
    (tmp_path / folder / "wrong.py").write_text(body)
    problems = layering_violations(tmp_path)
    assert len(problems) == 1 and problems[0].startswith(f"{folder}/wrong.py:") and f"may not import {layer}" in \
        problems[0], problems
