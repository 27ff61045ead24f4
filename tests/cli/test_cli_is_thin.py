"""The CLI is thin and quick (issue #18 items 1 and 7).

- ``crm-automation --help`` (and each verb's ``--help``) loads click and
  nothing of the product's heavy parts: no config models (pydantic), no log,
  no templates, no adapters. Checked by the modules a real process loaded,
  not by timing it (a timed test on a shared machine would be a coin toss;
  the note has the figures).
- cli.py imports no module of ``crm_automation.store`` and opens no store:
  what a verb shows comes from ``crm_automation.app``.
- ``crm_automation.app`` imports no click or rich: the web app calls it too.
- ``report --json`` carries the health beside the funnel and the sends to decide on.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.core import make_workspace

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "crm_automation"
HEAVY = ("crm_automation.store", "crm_automation.workspace", "crm_automation.config", "crm_automation.app",
         "crm_automation.worker", "crm_automation.templating", "crm_automation.mapping", "pydantic", "jinja2",
         "filelock", "rich", "sqlite3", "sqlite_utils", "openpyxl", "gspread", "imapclient")
_PROBE = """
import sys
from crm_automation.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    assert e.code in (0, None), e.code
print("=== modules ===")
print("\\n".join(sorted(sys.modules)))
"""


def _loaded(*args: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env, cwd=REPO,
                       check=True, timeout=60)
    return set(p.stdout.split("=== modules ===")[1].split())


@pytest.mark.parametrize("args", [("--help",), ("report", "--help"), ("suppress", "add", "--help"),
                                  ("send", "--help"), ("db", "copy", "--help")])
def test_help_loads_none_of_the_heavy_modules(args):
    loaded = _loaded(*args)
    assert "click" in loaded
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in HEAVY))
    assert heavy == [], f"{' '.join(args)} loaded {heavy}"


def _imports(path: Path) -> list[str]:
    """Every module a file imports, at the top or inside a function (``from x import y`` gives x and x.y)."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return out


def test_cli_imports_no_store_module_and_opens_no_store():
    cli_py = PACKAGE / "cli.py"
    store = [m for m in _imports(cli_py) if m == "crm_automation.store" or m.startswith("crm_automation.store.")]
    assert store == []
    assert "open_store" not in cli_py.read_text(encoding="utf-8")


def test_the_application_layer_imports_no_cli_library():
    files = sorted((PACKAGE / "app").glob("*.py"))
    assert {f.name for f in files} >= {"reports.py", "customers.py", "sends.py", "suppressions.py"}
    for f in files:
        ui = [m for m in _imports(f) if m.split(".")[0] in {"click", "rich"} or m == "crm_automation.cli"]
        assert ui == [], f"{f.name} imports {ui}"


def test_report_json_adds_health_beside_the_funnel_and_attention(tmp_path, cli):
    camp = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
    cfg = make_workspace(tmp_path / "ws", campaigns=camp)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    r = cli("report", "--config", str(cfg), "--json", "--now", "2026-11-27T10:30")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert list(data) == ["campaigns", "attention", "health", "owner_problems"]
    assert data["attention"] == []
    health = data["health"]
    assert health["at"] == "2026-11-27T02:30:00Z"
    assert {"sync", "fetch", "send", "writeback"} <= set(health["stages"])
    assert all(s["ok"] is True and s["finished_at"] for s in health["stages"].values()), health["stages"]
    assert health["queue"]["queued"] == 0 and health["quarantined"] == 0
    # The table and the CSV are as they were.
    assert "hello" in cli("report", "--config", str(cfg)).out
    assert cli("report", "--config", str(cfg), "--csv").out.splitlines()[0] == (
        "campaign,step,queued,sent,failed,uncertain,skipped,bounced,replied,unsubscribed,reply_rate")
