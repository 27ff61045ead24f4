"""Issue #17 item 4: a new or lost log never mails everyone again when the sheet shows they were mailed.

A workspace set up again from git (``var/`` and the log's marker are both
git-ignored) starts with an empty log, which looks exactly like "nobody has
been mailed". The sheet's own write-back columns say otherwise; sending is
held until the admin restores the log or accepts starting afresh.
"""

from __future__ import annotations

import csv
import json
import shutil

from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'


def emls(ws):
    return sorted((ws / "var" / "outbox").glob("*.eml"))


def stages(r):
    return {s["job"]: s for s in json.loads(r.out)["stages"]}


def set_up_again_from_git(ws, keep_log_at=None):
    """What a fresh clone of the workspace has: no var/ (log, outbox) and no marker beside the config."""
    if keep_log_at is not None:
        shutil.copy(ws / "var" / "crm.sqlite", keep_log_at)
    shutil.rmtree(ws / "var")
    for marker in ws.glob(".*.log-id.json"):
        marker.unlink()


def test_a_workspace_set_up_again_from_git_holds_sending_until_the_log_is_restored(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert len(emls(ws)) == 3
    sheet = list(csv.DictReader((ws / "customers.csv").open(encoding="utf-8")))
    assert all(r["Last sent"] for r in sheet)  # write-back filled the sheet's column
    set_up_again_from_git(ws, keep_log_at=tmp_path / "backup.sqlite")
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 2, r.out
    send = stages(r)["send"]
    assert send["stats"]["sent"] == 0 and "never sent anything" in send["error"]
    assert '"Last sent"' in send["error"] and "3 customer(s)" in send["error"]
    assert emls(ws) == []
    assert stages(r)["sync"]["ok"] and stages(r)["fetch"]["ok"]  # the rest of the cycle still ran
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 2 and "--accept-new-log" in r.err and "put the original log back" in r.err
    # Write-back waits meanwhile: the sheet's columns are the evidence, and must survive a colleague's edit.
    sheet = list(csv.DictReader((ws / "customers.csv").open(encoding="utf-8")))
    assert all(r["Last sent"] for r in sheet)
    text = (ws / "customers.csv").read_text(encoding="utf-8").replace("Customer 1", "Customer One")
    (ws / "customers.csv").write_text(text, encoding="utf-8")
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 2 and stages(r)["sync"]["stats"]["changed"] == 1 and emls(ws) == []
    # The admin restores the log: nobody is mailed again, and the pass is clean.
    shutil.copy(tmp_path / "backup.sqlite", ws / "var" / "crm.sqlite")
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert emls(ws) == []


def test_accept_new_log_after_a_dry_run_that_lists_who_would_be_mailed(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    set_up_again_from_git(ws)
    assert cli("sync", "--config", str(cfg)).code == 0
    r = cli("send", "--dry-run", "--accept-new-log", "--config", str(cfg), "--json")
    assert r.code == 0, r.out
    assert stages(r)["send-dry-run"]["stats"]["would_send"] == 3
    db = ws / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT value FROM meta WHERE key = 'accepted_new_log'") == []  # a dry run accepts nothing
    assert cli("send", "--config", str(cfg)).code == 2
    assert cli("send", "--accept-new-log", "--config", str(cfg)).code == 0
    assert len(emls(ws)) == 3
    assert cli("run", "--once", "--config", str(cfg)).code == 0  # accepted once is accepted
    assert len(emls(ws)) == 3


def test_a_status_column_showing_unsubscribed_counts_as_evidence_too(tmp_path, cli):
    ws = tmp_path / "ws"
    rows = [{"Email": "a@example.com", "Name": "A", "Stage": "lead", "Owner": "", "Email status": "已退订"},
            {"Email": "b@example.com", "Name": "B", "Stage": "lead", "Owner": "", "Email status": ""}]
    cfg = make_workspace(ws, rows=rows, campaigns=CAMPAIGN)
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 2 and '"Email status"' in stages(r)["send"]["error"]
    assert emls(ws) == []


def test_a_new_workspace_whose_sheet_shows_nothing_sends_at_once(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert len(emls(ws)) == 3


def test_check_names_the_hold_as_run_would(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert cli("check", "--config", str(cfg)).code == 0
    set_up_again_from_git(ws)
    assert cli("sync", "--config", str(cfg)).code == 0
    r = cli("check", "--config", str(cfg), "--json")
    assert r.code == 2
    plan = next(c for c in json.loads(r.out)["checks"] if c["name"] == "plan")
    assert "never sent anything" in plan["problems"][0]
