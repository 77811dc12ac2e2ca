"""The package layout's one rule, checked on the source: dependencies point one way,
model <- quant <- export <- hw (benchmarks may use all), so a board that runs `hw/` never needs
what sits above it."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["model", "quant", "export", "hw"]
# the one arrow upwards: block pruning prunes in the accelerator's own block unit
EXCEPTIONS = {("quant/masks.py", "hw.engine")}


def imports(path: Path) -> set[str]:
    """Modules a file imports (absolute imports, at any depth of the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_dependencies_point_one_way():
    wrong = []
    for pkg in ORDER:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for mod in imports(path):
                top = mod.split(".")[0]
                if top == "benchmarks" or (top in ORDER and ORDER.index(top) > ORDER.index(pkg)):
                    if (rel, mod) not in EXCEPTIONS:
                        wrong.append(f"{rel} imports {mod}")
    assert wrong == []


def test_the_rule_catches_an_upward_import(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from hw.reference import Reference\n")
    assert imports(p) == {"hw.reference"}
