"""``rekey`` and ``import`` beside other workers on one PostgreSQL workspace (issue #20).

On SQLite the lock file keeps every other worker out while they run. On
PostgreSQL several workers share the log, so:

- ``rekey`` rewrites every customer's key: it refuses while any other worker
  is alive (a send recorded or a reply logged under an old key while the keys
  move would belong to nobody), and while another holds ``sync``,
  ``send-plan`` or ``writeback``; nothing is changed, and the message names
  the worker;
- ``import`` writes the sheet: it refuses while another worker holds ``sync``
  or ``writeback`` (which read and write it), and runs beside workers that
  do not.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from crm_automation.app.access import WorkspaceLock
from crm_automation.workspace import Workspace
from tests.fixtures.core import CSV_MAPPING, make_workspace

pytestmark = pytest.mark.integration

CAMPAIGN = '[[campaign]]\nid = "welcome"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
ID_MAPPING = CSV_MAPPING.replace('key = "email"', 'key = "customer_id"').replace(
    "[fields]\n", '[fields]\ncustomer_id = { column = "ID", required = true }\n')
NOW = "2026-11-27T10:00"


def workspace_on(tmp_path: Path, database: str) -> Path:
    rows = [{"ID": f"C{i:03d}", "Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead",
             "Owner": "owner@example.com"} for i in range(3)]
    cfg = make_workspace(tmp_path / "ws", rows=rows, campaigns=CAMPAIGN)
    text = cfg.read_text(encoding="utf-8").replace('database = "var/crm.sqlite"', f'database = "{database}"')
    cfg.write_text(text, encoding="utf-8")
    return cfg


def log_keys(cfg: Path) -> list[str]:
    store = Workspace.load(cfg).open_store()
    try:
        return sorted(store.customers(present_only=False))
    finally:
        store.close()


def test_rekey_refuses_while_another_worker_is_alive_or_holds_a_stage_and_runs_once_alone(tmp_path, cli, pg_log):
    cfg = workspace_on(tmp_path, pg_log)
    r = cli("run", "--once", "--config", str(cfg), "--now", NOW)
    assert r.code == 0, r.err
    (cfg.parent / "mappings" / "customers.toml").write_text(ID_MAPPING, encoding="utf-8")
    emails = [f"c{i}@example.com" for i in range(3)]
    assert log_keys(cfg) == emails

    with WorkspaceLock(Workspace.load(cfg)) as other:
        r = cli("rekey", "--config", str(cfg))
        assert r.code == 2, r.out + r.err
        assert "rekey refused: 1 other worker(s) are running on this workspace" in r.err
        assert other.fleet.worker_id in r.err and "nothing was changed" in r.err and "Traceback" not in r.err
        assert log_keys(cfg) == emails
        with other.fleet.exclusive("send-plan") as holder:
            assert holder is None
            r = cli("rekey", "--config", str(cfg))
            assert r.code == 2, r.out + r.err
            assert f"rekey refused: the send-plan stage is held by worker {other.fleet.worker_id}" in r.err
        # the dry run reads only: it shows the plan beside a running worker
        r = cli("rekey", "--dry-run", "--config", str(cfg))
        assert r.code == 0 and "would re-key 3 customer(s)" in r.out, r.out + r.err
    assert log_keys(cfg) == emails

    r = cli("rekey", "--config", str(cfg))  # the other worker stopped: the re-key runs
    assert r.code == 0, r.err
    assert "re-keyed 3 customer(s)" in r.out
    assert log_keys(cfg) == ["C000", "C001", "C002"]


def test_import_waits_for_no_worker_but_refuses_while_another_reads_or_writes_the_sheet(tmp_path, cli, pg_log):
    cfg = workspace_on(tmp_path, pg_log)
    sheet = cfg.parent / "customers.csv"
    export = tmp_path / "export.csv"
    export.write_text("ID,Email,Name,Stage\nC100,new@example.com,New One,lead\n", encoding="utf-8")
    args = ("import", str(export), "--json", "--config", str(cfg))
    before = sheet.read_text(encoding="utf-8")
    with WorkspaceLock(Workspace.load(cfg)) as other:
        for stage in ("sync", "writeback"):
            with other.fleet.exclusive(stage) as holder:
                assert holder is None
                r = cli(*args)
                assert r.code == 2, r.out + r.err
                assert f"import refused: the {stage} stage is held by worker {other.fleet.worker_id}" in r.err
                assert sheet.read_text(encoding="utf-8") == before
        r = cli(*args)  # the other worker is alive but neither reads nor writes the sheet now
        assert r.code == 0, r.out + r.err
        assert json.loads(r.out)["add"] == 1
    with sheet.open(encoding="utf-8") as f:
        assert "new@example.com" in {row["Email"] for row in csv.DictReader(f)}
