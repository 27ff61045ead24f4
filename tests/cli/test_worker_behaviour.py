"""Worker behaviour through the CLI: exactly-once inbound, write-back into a real .xlsx, the scheduled loop."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import openpyxl

from tests.fixtures.core import REPO, db_rows, make_workspace, run_subprocess

REPLY = (b"From: Customer 0 <C0@Example.com>\r\nTo: sales@example.com\r\nSubject: Re: hello\r\n"
         b"Message-ID: <dup-1@example.com>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0800\r\n\r\nYes please.\r\n")


def test_same_message_id_twice_is_one_activity(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    inbox = tmp_path / "ws" / "inbox"
    (inbox / "new" / "1.a").write_bytes(REPLY)
    (inbox / "cur" / "2.b:2,S").write_bytes(REPLY)  # the same message delivered again (CC + BCC)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert cli("fetch", "--config", str(cfg)).code == 0
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    rows = db_rows(db, "SELECT customer_key, kind, body FROM activities WHERE message_id = '<dup-1@example.com>'")
    assert rows == [("c0@example.com", "email_in", "Yes please.")]


def test_malformed_message_is_quarantined_whole_and_the_rest_logged(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    inbox = tmp_path / "ws" / "inbox" / "new"
    junk = b"\x00\x01 this is not an email at all \xff\xfe" * 3
    (inbox / "1.junk").write_bytes(junk)
    (inbox / "2.ok").write_bytes(REPLY)
    r = cli("fetch", "--config", str(cfg), "--json")
    assert r.code == 0
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    q = db_rows(db, "SELECT raw, error FROM quarantine")
    assert len(q) == 1 and q[0][0] == junk and q[0][1]
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'email_in'") == [(1,)]
    cli("fetch", "--config", str(cfg))
    assert db_rows(db, "SELECT COUNT(*) FROM quarantine") == [(1,)]


def test_writeback_into_real_xlsx_keeps_formulas_and_other_columns(sample_ws):
    cfg = sample_ws / "config.toml"
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("writeback = false", "writeback = true"), encoding="utf-8")
    r = run_subprocess("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code == 1, r.err
    wb = openpyxl.load_workbook(sample_ws / "examples" / "customers.xlsx")
    ws = wb["客户"]
    headers = [c.value for c in ws[1]]
    for col in ("最近发送", "最近回复", "邮件状态"):
        assert col in headers
    assert ws["I2"].value == "=TODAY()-DATE(2026,11,1)"  # the team's formula is untouched
    assert "说明" in wb.sheetnames
    rows = {r[headers.index("邮箱")]: r for r in ws.iter_rows(min_row=2, values_only=True)}
    zhang = rows["zhang.wei@example.cn"]
    # The sample workspace is zh-CN ([workspace] language): Chinese words, dates year first and zero-padded.
    assert rows["Wang.Fang@Example.cn"][headers.index("最近发送")] == "2026年11月27日 10:00"
    assert zhang[headers.index("最近回复")] == "2026年11月21日 09:30"
    assert zhang[headers.index("邮件状态")] == "正常"
    assert rows["huang.li@example.cn"][headers.index("邮件状态")] == "已退订"
    assert rows["zhang.wei@example.cn"][headers.index("备注")] == "展会名片"


def test_scheduled_worker_stops_cleanly_on_sigterm(tmp_path):
    cfg = make_workspace(tmp_path / "ws", extra_config='[schedule]\nsync_every = "1s"\nfetch_every = "1s"\n'
                                                          'send_every = "1s"\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "crm_automation", "run", "--config", str(cfg)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    deadline = time.monotonic() + 60
    def syncs_done() -> int:
        try:
            return db_rows(db, "SELECT COUNT(*) FROM runs WHERE job = 'sync' AND finished_at IS NOT NULL")[0][0]
        except sqlite3.OperationalError:  # the worker is still creating the log
            return 0

    while time.monotonic() < deadline:
        if db.exists() and syncs_done() >= 2:
            break
        time.sleep(0.2)
    else:
        p.kill()
        raise AssertionError("the scheduled worker did not run sync twice in 30 s")
    # While it runs, a second worker is refused.
    r = run_subprocess("run", "--once", "--config", str(cfg))
    assert r.code == 2 and "another crm-automation worker" in r.err
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "worker stopped" in err and "Traceback" not in err
    assert db_rows(db, "SELECT COUNT(*) FROM runs WHERE finished_at IS NULL") == [(0,)]


def test_owner_is_notified_of_a_reply_exactly_once(tmp_path, cli):
    import email as email_mod

    cfg = make_workspace(tmp_path / "ws", extra_config="notify_owner = true\n")
    (tmp_path / "ws" / "inbox" / "new" / "1.a").write_bytes(REPLY)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    emls = list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))
    assert len(emls) == 1
    msg = email_mod.message_from_bytes(emls[0].read_bytes())
    assert msg["To"] == "owner@example.com"
    assert msg["In-Reply-To"] == "<dup-1@example.com>"
    assert msg["Reply-To"] == "c0@example.com"
    assert "Yes please." in msg.get_payload(decode=True).decode()
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT campaign, status FROM sends") == [("owner-notify", "sent")]


def test_unknown_senders_become_new_rows_when_configured(tmp_path, cli):
    import csv

    cfg = make_workspace(tmp_path / "ws", mailbox='source = "maildir"\npath = "inbox"\nnew_senders = "add_to_sheet"')
    (tmp_path / "ws" / "inbox" / "new" / "1.a").write_bytes(
        b"From: =?utf-8?b?5YiY5YWI55Sf?= <Mr.Liu@NewLead.example.cn>\r\nTo: sales@example.com\r\n"
        b"Subject: enquiry\r\nMessage-ID: <lead-1@example.cn>\r\n\r\nPrice for 200 desks?\r\n")
    (tmp_path / "ws" / "inbox" / "new" / "2.b").write_bytes(
        b"From: robot@example.net\r\nTo: sales@example.com\r\nSubject: Automatic reply: away\r\n"
        b"Auto-Submitted: auto-replied\r\nMessage-ID: <auto-1@example.net>\r\n\r\nI am away.\r\n")
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 0, r.err
    rows = list(csv.DictReader((tmp_path / "ws" / "customers.csv").open(encoding="utf-8")))
    added = [x for x in rows if x["Email"] == "mr.liu@newlead.example.cn"]
    assert len(added) == 1 and added[0]["Name"] == "刘先生"
    assert not any(x["Email"] == "robot@example.net" for x in rows)  # auto-replies are not leads
    # Another message from the same lead before the next sync does not add the row twice.
    (tmp_path / "ws" / "inbox" / "new" / "3.c").write_bytes(
        b"From: Mr.Liu@NewLead.example.cn\r\nTo: sales@example.com\r\nSubject: again\r\n"
        b"Message-ID: <lead-2@example.cn>\r\n\r\nAny news?\r\n")
    assert cli("fetch", "--config", str(cfg)).code == 0
    rows = list(csv.DictReader((tmp_path / "ws" / "customers.csv").open(encoding="utf-8")))
    assert sum(x["Email"] == "mr.liu@newlead.example.cn" for x in rows) == 1
    # The next cycle's sync picks the new row up; a second fetch adds nothing twice.
    cli("run", "--once", "--config", str(cfg))
    rows = list(csv.DictReader((tmp_path / "ws" / "customers.csv").open(encoding="utf-8")))
    assert sum(x["Email"] == "mr.liu@newlead.example.cn" for x in rows) == 1
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT COUNT(*) FROM customers WHERE key = 'mr.liu@newlead.example.cn'") == [(1,)]


def test_bounces_suppress_only_when_permanent(tmp_path, cli):
    eml = REPO / "tests" / "data" / "eml" / "bounce"
    rows = [{"Email": "bob.unknown@example.net", "Name": "Bob", "Stage": "lead", "Owner": ""},
            {"Email": "slow@example.org", "Name": "Slow", "Stage": "lead", "Owner": ""}]
    cfg = make_workspace(tmp_path / "ws", rows=rows)
    new = tmp_path / "ws" / "inbox" / "new"
    (new / "1.perm").write_bytes((eml / "postfix_permanent.eml").read_bytes())
    (new / "2.temp").write_bytes((eml / "postfix_delayed.eml").read_bytes())
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    acts = dict(db_rows(db, "SELECT customer_key, kind FROM activities WHERE kind = 'bounce'"))
    assert acts == {"bob.unknown@example.net": "bounce", "slow@example.org": "bounce"}
    assert db_rows(db, "SELECT email, reason FROM suppressions") == [("bob.unknown@example.net", "bounced")]
    status = dict(db_rows(db, "SELECT key, email_status FROM customers"))
    assert status == {"bob.unknown@example.net": "bounced", "slow@example.org": "ok"}


def test_reply_from_a_colleague_is_matched_through_in_reply_to(tmp_path, cli):
    import email as email_mod

    campaign = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
    cfg = make_workspace(tmp_path / "ws", campaigns=campaign)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    mid = db_rows(db, "SELECT message_id FROM sends WHERE customer_key = 'c1@example.com'")[0][0]
    sent = [p for p in (tmp_path / "ws" / "var" / "outbox").glob("*.eml")
            if email_mod.message_from_bytes(p.read_bytes())["Message-ID"] == mid]
    assert len(sent) == 1
    (tmp_path / "ws" / "inbox" / "new" / "9.colleague").write_bytes(
        b"From: Assistant <assistant@partner.example.org>\r\nTo: sales@example.com\r\nSubject: Re: Hello\r\n"
        b"Message-ID: <colleague-1@partner.example.org>\r\nIn-Reply-To: " + mid.encode() + b"\r\n"
        b"References: " + mid.encode() + b"\r\n\r\nAnswering for my boss: yes, interested.\r\n")
    assert cli("fetch", "--config", str(cfg)).code == 0
    row = db_rows(db, "SELECT customer_key, kind, json_extract(details, '$.matched_by') FROM activities "
                      "WHERE message_id = '<colleague-1@partner.example.org>'")
    assert row == [("c1@example.com", "email_in", f"reply to {mid}")]


def test_our_own_write_back_does_not_cost_the_next_sync_a_read_but_their_edits_do(tmp_path):
    import csv

    from crm_automation.worker import Worker
    from crm_automation.workspace import Workspace

    cfg = make_workspace(tmp_path / "ws")
    path = tmp_path / "ws" / "customers.csv"

    def edit_name(key: str, name: str) -> None:
        rows = list(csv.DictReader(path.open(encoding="utf-8")))
        for r in rows:
            if r["Email"] == key:
                r["Name"] = name
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)

    w = Worker(Workspace.load(cfg))
    try:
        results = {r.job: r for r in w.run_once()}
        assert results["writeback"].stats["cells"] > 0  # the status columns were written into the file
        assert "Email status" in path.read_text(encoding="utf-8")
        assert w.sync().stats.get("note") == "sheet unchanged since the last sync"
        edit_name("c1@example.com", "Renamed")  # a colleague saves the file
        st = w.sync().stats
        assert "note" not in st and st["changed"] == 1
        # Their save between our sync and our write-back: the write waits, and the next sync reads the file.
        w.store.set_email_status("c0@example.com", "unsubscribed")
        edit_name("c2@example.com", "Also renamed")
        assert "changed since it was read" in w.writeback().stats["postponed"]
        st = w.sync().stats
        assert "note" not in st and st["changed"] == 1
        assert w.writeback().stats["cells"] == 1
        assert w.sync().stats.get("note") == "sheet unchanged since the last sync"
        assert "Also renamed" in path.read_text(encoding="utf-8") and "unsubscribed" in path.read_text(encoding="utf-8")
    finally:
        w.close()
    # A new worker process trusts the digest the last one recorded.
    w = Worker(Workspace.load(cfg))
    try:
        assert w.sync().stats.get("note") == "sheet unchanged since the last sync"
    finally:
        w.close()
