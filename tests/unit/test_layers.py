"""Imports only go down the layers the README's layout table draws (issue #18).

Why a test: the layers are what lets the web app (#19) call the use cases,
a second log backend (#20) replace the store, and the digests (#21) reuse
the send pass. An import that climbs back up (an adapter reaching for a
stage, the store for a rule) is how those rooms silt up again.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crm_automation

PACKAGE = Path(crm_automation.__file__).parent
# Top (0) to bottom (7); a module may import its own layer or any layer below it, never one above.
LAYERS: dict[str, int] = {
    "__main__": 0, "cli": 0,
    "app": 1, "worker": 1, "web": 1,
    "sheetsync": 2, "inbound": 2, "send": 2, "rekey": 2, "importer": 2, "checks": 2, "stage": 2, "workspace": 2,
    "parallel": 3, "reading": 3,
    "planner": 4, "edits": 4, "classify": 4, "match": 4, "effects": 4, "reply_text": 4, "tokens": 4,
    "templating": 4, "compose": 4, "parse": 4, "quickmime": 4, "suppression": 4, "mapping": 4, "tracking": 4,
    "contact": 4, "outgoing": 4, "owner_digest": 4,
    "sheets": 5, "mailbox": 5, "transports": 5,
    "store": 6, "config": 6, "fieldtypes": 6, "credentials": 6, "addresses": 6,
    "models": 7, "errors": 7, "files": 7, "fleet": 7, "cells": 7, "status_words": 7, "__init__": 7,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def _imports(path: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("crm_automation"):
            out += ([node.module] if node.module != "crm_automation"
                    else [f"crm_automation.{a.name}" for a in node.names])
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("crm_automation")]
    return out


def _module(path: Path) -> str:
    return ".".join(("crm_automation", *path.relative_to(PACKAGE).with_suffix("").parts))


def test_every_module_has_a_layer():
    modules = {_module(p) for p in PACKAGE.rglob("*.py")}
    unknown = {m for m in modules if [*m.split("."), "__init__"][1] not in LAYERS}
    assert sorted(unknown) == []  # a new top-level module or package: give it a layer here and in the README


def test_no_import_climbs_back_up():
    climbs = sorted(f"{_module(p)} -> {m}" for p in PACKAGE.rglob("*.py") for m in _imports(p)
                    if _layer(m) < _layer(_module(p)))
    assert climbs == []


def test_the_layer_check_sees_a_climb(tmp_path):
    """The check itself can fail: an adapter importing a stage is caught."""
    bad = tmp_path / "x.py"
    bad.write_text("from crm_automation.sheetsync import SheetSession\n", encoding="utf-8")
    (m,) = _imports(bad)
    assert _layer(m) < LAYERS["sheets"]


def test_the_web_app_never_opens_the_store():
    """The web package renders use-case results (issue #19): it reaches the log only through crm_automation.app."""
    reach = sorted(f"{_module(p)} -> {m}" for p in (PACKAGE / "web").rglob("*.py") for m in _imports(p)
                   if m.startswith("crm_automation.store"))
    assert reach == []
