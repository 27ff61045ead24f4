"""The store records and decides nothing, behind one typed protocol per part (issue #18).

mypy proves that ``Store`` satisfies every protocol (``store/repo.py``);
these tests keep the protocols a description of the *whole* surface, and
keep ``store/`` from importing anything above it.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import crm_automation
from crm_automation.store import protocols
from crm_automation.store.repo import Store

STORE_DIR = Path(crm_automation.__file__).parent / "store"
# What store/ may import from the project: itself and the bottom layer (issue #18's layout).
ALLOWED = ("crm_automation.store", "crm_automation.models", "crm_automation.errors")
CONSTRUCTORS = {"open", "open_readonly"}  # how a backend is made is its own business


def _members(proto: type) -> set[str]:
    return {n for n in vars(proto) if not n.startswith("_") and callable(getattr(proto, n))}


def test_every_public_method_of_the_store_is_in_exactly_one_part():
    public = {n for n, _ in inspect.getmembers(Store, callable) if not n.startswith("_")} - CONSTRUCTORS
    parts = {p.__name__: _members(p) for p in protocols.PARTS}
    described = [n for names in parts.values() for n in names]
    assert sorted(public - set(described)) == []  # a method no part describes: add it to store/protocols.py
    assert sorted(set(described) - public) == []  # a protocol promising what the store does not have
    assert len(described) == len(set(described)), parts  # each method belongs to one part


def test_the_whole_store_protocol_is_every_part():
    assert set(protocols.LogStore.__mro__) >= set(protocols.PARTS)


def _project_imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crm_automation"):
            out.append(node.module if node.module != "crm_automation" else
                       ", ".join(f"crm_automation.{a.name}" for a in node.names))
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("crm_automation")]
    return out


def test_the_store_imports_nothing_above_it():
    """Today's main imported effects, mailbox.base, config, files and a stage (inbound) from store/."""
    wrong = {f"{p.name}: {m}" for p in sorted(STORE_DIR.glob("*.py")) for m in _project_imports(p)
             if not any(m == a or m.startswith(a + ".") for a in ALLOWED)}
    assert sorted(wrong) == []
