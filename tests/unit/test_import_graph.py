"""The shape of the code: each service imports only services.common and itself; services.common
imports no service; no service imports the operator tools (crm)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in ("services", "crm")}


def _package_of(name: str) -> str:
    parts = name.split(".")
    return parts[0] if parts[0] == "crm" else ".".join(parts[:2])


def test_services_import_only_common_and_themselves() -> None:
    wrong = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        own = ".".join(path.relative_to(ROOT).parts[:2])
        allowed = {"services.common", own}
        for name in _imports(path):
            if _package_of(name) not in allowed and name != "services":
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_graph_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from crm.replay import replay\nimport services.stager.rules\n")
    assert {_package_of(n) for n in _imports(bad)} == {"crm", "services.stager"}
