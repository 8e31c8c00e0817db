"""The rooms of the code base import one way (docs/architecture.md); a wrong import fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spottune"

# room -> the rooms of spottune it may import (besides itself)
ALLOWED = {
    "contract": set(),
    "core": {"contract"},
    "ml": {"contract"},
    "data": {"contract", "ml"},
    "app": {"contract", "core", "ml"},
    "worker": {"contract", "core", "ml"},
    "client": {"contract", "signing"},
}


def _imports(path: Path) -> set[str]:
    """Modules of spottune that `path` imports, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("spottune.")}


EXCEPTIONS: set[tuple[str, str]] = set()  # (file, module) pairs allowed to break a rule


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_room_imports_only_what_it_may(room: str) -> None:
    wrong = []
    for path in sorted((PACKAGE / room).rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        for module in _imports(path):
            target = module.split(".")[1]
            allowed = target == room or target in ALLOWED[room] or (name, module) in EXCEPTIONS
            if not allowed:
                wrong.append(f"spottune/{name} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_plain_unet_knows_nothing_of_spottune() -> None:
    assert not {m for m in _imports(PACKAGE / "ml" / "network.py") if m != "spottune.ml.config"}


def test_method_and_policy_lists_are_written_once() -> None:
    for text in ('"finetune-first", "finetune-last"', '["instance", "global"]'):
        homes = [p for p in PACKAGE.rglob("*.py") if text in p.read_text()]
        assert [p.relative_to(PACKAGE).as_posix() for p in homes] == ["contract/kinds.py"], text
