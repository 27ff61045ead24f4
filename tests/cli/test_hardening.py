"""Issue #9: ordinary accidents must never mail the wrong person, lose a message or kill the worker.

Each test reproduces one accident through the CLI on a real CSV workspace
with a Maildir inbox and the outbox transport, and checks the exit code,
the message and what was (not) sent or logged.
"""

from __future__ import annotations

import csv
import json
import os
import time

from tests.fixtures.core import REPO, db_rows, make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
NEW_ONLY = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\n'


def emls(ws):
    return sorted((ws / "var" / "outbox").glob("*.eml"))


def stages(r):
    return {s["job"]: s for s in json.loads(r.out)["stages"]}


def mail(sender: str, body: str, *, mid: str, subject: str = "Re: hello", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: sales@example.com\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
            f"Date: Fri, 27 Nov 2026 09:00:00 +0800\r\n{extra}MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()


def add_row(cfg, row):
    path = cfg.parent / "customers.csv"
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    rows.append(row)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


# ------------------------------------------------------------ 1. sending needs a fresh inbound view

def test_no_campaign_goes_out_while_the_mailbox_cannot_be_read(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    good = cfg.read_text(encoding="utf-8")
    cfg.write_text(good.replace('path = "inbox"', 'path = "inbx"'), encoding="utf-8")  # a typo in the path
    # A 退订 from c0 waits in the real inbox.
    (tmp_path / "ws" / "inbox" / "new" / "1.unsub").write_bytes(
        mail("c0@example.com", "退订", mid="<unsub-1@example.com>", subject="退订"))
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 3, r.out + r.err
    st = stages(r)
    assert "not a Maildir" in st["fetch"]["error"]
    assert st["send"]["ok"] is False and "nothing was sent" in st["send"]["error"]
    assert "mailbox could not be read" in st["send"]["error"]
    assert emls(tmp_path / "ws") == []
    assert db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT COUNT(*) FROM sends") == [(0,)]
    # `send` on its own fetches first too.
    r = cli("send", "--config", str(cfg))
    assert r.code == 3 and "nothing was sent" in r.err
    assert emls(tmp_path / "ws") == []
    # Path fixed: the unsubscribe is honoured before anything goes.
    cfg.write_text(good, encoding="utf-8")
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 0, r.err
    rows = dict(db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT customer_key, status FROM sends"))
    assert rows == {"c0@example.com": "skipped", "c1@example.com": "sent", "c2@example.com": "sent"}
    assert len(emls(tmp_path / "ws")) == 2


# ------------------------------------------------------------ 2. no lost inbound

def test_reused_message_id_with_other_content_is_logged_and_a_redelivery_is_not(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    new = tmp_path / "ws" / "inbox" / "new"
    first = mail("c0@example.com", "First question", mid="<same@example.com>")
    (new / "1.a").write_bytes(first)
    (new / "2.b").write_bytes(b"Received: from relay2 by mx; Fri, 27 Nov 2026 01:00:01 +0000\r\n" + first)
    (new / "3.c").write_bytes(mail("c1@example.com", "A different message", mid="<same@example.com>"))
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert cli("fetch", "--config", str(cfg)).code == 0
    rows = db_rows(tmp_path / "ws" / "var" / "crm.sqlite",
                   "SELECT customer_key, body, digest IS NOT NULL FROM activities WHERE message_id = "
                   "'<same@example.com>' ORDER BY customer_key")
    assert rows == [("c0@example.com", "First question", 1), ("c1@example.com", "A different message", 1)]


def test_mail_from_an_unknown_sender_is_linked_when_the_lead_is_added_and_no_welcome_goes(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=NEW_ONLY)
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    (tmp_path / "ws" / "inbox" / "new" / "1.enq").write_bytes(
        mail("Lead <Lead@Example.org>", "Do you ship to Hangzhou?", mid="<enq-1@example.org>", subject="询价"))
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:05").code == 0
    assert db_rows(db, "SELECT customer_key FROM activities WHERE message_id = '<enq-1@example.org>'") == [(None,)]
    # The team adds the lead to the sheet; another, who never wrote, too.
    add_row(cfg, {"Email": "lead@example.org", "Name": "Lead", "Stage": "lead", "Owner": ""})
    add_row(cfg, {"Email": "quiet@example.org", "Name": "Quiet", "Stage": "lead", "Owner": ""})
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:10", "--json")
    assert r.code == 0, r.err
    assert stages(r)["sync"]["stats"]["earlier_mail_linked"] == 1
    rows = db_rows(db, "SELECT customer_key, json_extract(details, '$.matched_by') FROM activities "
                       "WHERE message_id = '<enq-1@example.org>'")
    assert len(rows) == 1 and rows[0][0] == "lead@example.org" and "when the customer was added" in rows[0][1]
    sends = {k: (s, e) for k, s, e in db_rows(db, "SELECT customer_key, status, error FROM sends")}
    assert sends["quiet@example.org"][0] == "sent"
    assert sends["lead@example.org"][0] == "skipped"
    assert "already wrote to us before being added" in sends["lead@example.org"][1]
    r = cli("timeline", "lead@example.org", "--config", str(cfg))
    assert "Do you ship to Hangzhou?" in r.out


def test_a_campaign_may_still_welcome_leads_who_wrote_first(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=NEW_ONLY + "skip_if_already_wrote = false\n")
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    (tmp_path / "ws" / "inbox" / "new" / "1.enq").write_bytes(
        mail("lead@example.org", "Hello?", mid="<enq-2@example.org>", subject="Question"))
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:05").code == 0
    add_row(cfg, {"Email": "lead@example.org", "Name": "Lead", "Stage": "lead", "Owner": ""})
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:10").code == 0
    assert db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT status FROM sends") == [("sent",)]


def test_skip_if_already_wrote_is_refused_on_other_triggers(tmp_path, cli):
    camp = ('[[campaign]]\nid = "q"\ntemplate = "hello"\ntrigger = "change"\nfield = "stage"\nto = "quote"\n'
            "skip_if_already_wrote = false\n")
    cfg = make_workspace(tmp_path / "ws", campaigns=camp)
    r = cli("check", "--config", str(cfg))
    assert r.code == 2 and "skip_if_already_wrote applies only to trigger \"new\"" in r.out


def test_an_unsubscribe_from_an_unknown_address_marks_the_customer_when_added(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=NEW_ONLY)
    (tmp_path / "ws" / "inbox" / "new" / "1.u").write_bytes(
        mail("later@example.org", "TD", mid="<td-1@example.org>", subject="TD"))
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    add_row(cfg, {"Email": "later@example.org", "Name": "Later", "Stage": "lead", "Owner": ""})
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:05").code == 0
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'later@example.org'") == [("unsubscribed",)]
    assert db_rows(db, "SELECT status FROM sends WHERE customer_key = 'later@example.org'") == [("skipped",)]


def test_a_quarantined_message_from_a_customer_stops_their_follow_up(tmp_path, cli):
    camp = CAMPAIGN + 'follow_up = [{ after_days = 3, template = "hello" }]\n'
    cfg = make_workspace(tmp_path / "ws", campaigns=camp)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    # c1 answers with a message the parser refuses (nested too deep); it is quarantined, but it is contact.
    deep = (REPO / "tests" / "data" / "eml" / "quarantine" / "deep_nesting.eml").read_bytes()
    (tmp_path / "ws" / "inbox" / "new" / "1.deep").write_bytes(
        deep.replace(b"From: deep@example.net", b"From: Customer 1 <C1@example.com>", 1))
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-28T10:00", "--json")
    assert stages(r)["fetch"]["stats"]["quarantined"] == 1
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT from_addr, customer_key FROM quarantine") == [("c1@example.com", "c1@example.com")]
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-30T10:01")
    steps = {k: (s, e) for k, s, e in db_rows(db, "SELECT customer_key, status, error FROM sends WHERE step = 1")}
    assert steps["c0@example.com"][0] == "sent" and steps["c2@example.com"][0] == "sent"
    assert steps["c1@example.com"][0] == "skipped"
    assert "quarantined message from the customer" in steps["c1@example.com"][1]
    assert "nested deeper" in steps["c1@example.com"][1]


def test_a_message_over_the_size_limit_keeps_its_start_its_size_and_says_so(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", extra_config="")
    cfg.write_text(cfg.read_text().replace('path = "inbox"', 'path = "inbox"\nmax_message_bytes = 2048'))
    big = mail("c0@example.com", "x" * 10_000, mid="<big@example.com>")
    (tmp_path / "ws" / "inbox" / "new" / "1.big").write_bytes(big)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    (raw, size, err, key), = db_rows(tmp_path / "ws" / "var" / "crm.sqlite",
                                      "SELECT raw, size, error, customer_key FROM quarantine")
    assert len(raw) == 2048 and raw == big[:2048]
    assert size == len(big) and key == "c0@example.com"
    assert f"{len(big)} bytes is over max_message_bytes = 2048" in err and "stays in the mailbox" in err


# ------------------------------------------------------------ 3. the log cannot be swapped

def _delete_log(ws):
    for p in (ws / "var").glob("crm.sqlite*"):
        if not p.name.endswith(".lock"):
            p.unlink()


def test_a_deleted_log_is_refused_instead_of_mailing_everyone_again(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert len(emls(ws)) == 3
    _delete_log(ws)
    for verb in (["run", "--once"], ["send"], ["sync"]):
        r = cli(*verb, "--config", str(cfg), "--json")
        assert r.code == 2, (verb, r.out, r.err)
        err = json.loads(r.out)
        assert err["ok"] is False and err["exit"] == 2 and "not the activity log" in err["error"]
        assert "--accept-new-log" in err["hint"]
    assert len(emls(ws)) == 3
    # Told explicitly, it starts over (and the README says what that means).
    r = cli("run", "--once", "--config", str(cfg), "--accept-new-log")
    assert r.code == 0, r.err
    assert "accepting" in r.err
    assert cli("run", "--once", "--config", str(cfg)).code == 0


def test_an_emptied_log_is_refused(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    import sqlite3

    con = sqlite3.connect(ws / "var" / "crm.sqlite")
    con.execute("DELETE FROM sends")
    con.commit()
    con.close()
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 2 and "emptied or replaced by an older copy" in r.err
    assert len(emls(ws)) == 3


def test_a_workspace_that_never_sent_accepts_a_new_log_silently(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws)  # no campaigns: nothing is ever sent
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    _delete_log(ws)
    assert cli("run", "--once", "--config", str(cfg)).code == 0


def test_the_log_deleted_or_replaced_under_a_running_worker_stops_it(tmp_path):
    import pytest

    from crm_automation.errors import ConfigError
    from crm_automation.worker import Worker
    from crm_automation.workspace import Workspace

    ws_dir = tmp_path / "ws"
    cfg = make_workspace(ws_dir, campaigns=CAMPAIGN)
    w = Worker(Workspace.load(cfg))
    try:
        assert w.sync().ok
        db = ws_dir / "var" / "crm.sqlite"
        db.rename(ws_dir / "var" / "moved.sqlite")
        with pytest.raises(ConfigError, match="deleted while the worker was running"):
            w.fetch_and_send()
        (ws_dir / "var" / "moved.sqlite").rename(db)
        assert w.fetch().ok  # the same file is back
        other = ws_dir / "var" / "other.sqlite"
        other.write_bytes(db.read_bytes())
        other.replace(db)
        with pytest.raises(ConfigError, match="replaced by another file"):
            w.run_once()
    finally:
        w.close()
    assert emls(ws_dir) == []


# ------------------------------------------------------------ 4. templates checked before any send

def test_a_template_syntax_error_holds_only_its_campaign(tmp_path, cli):
    camp = CAMPAIGN + '\n[[campaign]]\nid = "bad"\ntemplate = "broken"\ntrigger = "new"\ninclude_existing = true\n'
    cfg = make_workspace(tmp_path / "ws", campaigns=camp, templates={
        "hello.txt": "Subject: Hello {{ customer.name }}\n\nHi\n",
        "broken.txt": "Subject: Oops\n\nHi {{ customer.name \n"})
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 2
    send = stages(r)["send"]
    assert "broken.txt" in " ".join(send["problems"]) and "syntax" in " ".join(send["problems"])
    rows = db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT campaign, status, COUNT(*) FROM sends "
                   "GROUP BY campaign, status ORDER BY campaign")
    # one_per_cycle: each customer gets one email a pass, so the held campaign's sends wait queued
    assert ("hello", "sent", 3) in rows
    assert all(s != "failed" for _, s, _ in rows)


def test_a_campaign_pointing_at_a_missing_template_is_held_not_failed(tmp_path, cli):
    camp = '[[campaign]]\nid = "gone"\ntemplate = "nosuch"\ntrigger = "new"\ninclude_existing = true\n'
    cfg = make_workspace(tmp_path / "ws", campaigns=camp)
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 2 and "nosuch.txt: template not found" in r.err
    assert db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT DISTINCT status FROM sends") == [("queued",)]
    (tmp_path / "ws" / "email_templates" / "nosuch.txt").write_text("Subject: Here\n\nnow\n", encoding="utf-8")
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert len(emls(tmp_path / "ws")) == 3


def test_an_exception_rendering_one_customer_fails_that_send_only(tmp_path, cli):
    rows = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": str(i), "Owner": ""} for i in range(3)]
    cfg = make_workspace(tmp_path / "ws", rows=rows, campaigns=CAMPAIGN, templates={
        "hello.txt": "Subject: Hello\n\nDear {{ customer.name }},\n{{ 10 // (customer.stage | int) }} left\n"})
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 1, r.err
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    sends = {k: (s, e) for k, s, e in db_rows(db, "SELECT customer_key, status, error FROM sends")}
    assert sends["c1@example.com"][0] == "sent" and sends["c2@example.com"][0] == "sent"
    status, error = sends["c0@example.com"]
    assert status == "failed"
    assert "hello.txt" in error and "line 4" in error and "c0@example.com" in error
    assert "ZeroDivisionError" in error or "division" in error
    assert len(emls(tmp_path / "ws")) == 2


def test_a_runaway_template_is_stopped_by_the_limits(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, templates={
        "hello.txt": "Subject: Hello\n\n{% for i in range(10**9) %}x{% endfor %}\n"})
    t0 = time.monotonic()
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert time.monotonic() - t0 < 60
    assert r.code == 1, r.err
    errors = db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT status, error FROM sends")
    assert len(errors) == 3 and all(s == "failed" and "hello.txt" in e for s, e in errors)


# ------------------------------------------------------------ 5. environment: clear errors

def test_preview_into_a_missing_folder_is_a_clear_error(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    assert cli("sync", "--config", str(cfg)).code == 0
    out = tmp_path / "nowhere" / "p.eml"
    r = cli("preview", "hello", "--customer", "c0@example.com", "--out", str(out), "--config", str(cfg), "--json")
    assert r.code == 2
    err = json.loads(r.out)
    assert str(out) in err["error"] and "does not exist" in err["error"] and "Traceback" not in r.err
    assert not out.parent.exists()


# ------------------------------------------------------------ 6. the smaller ones

def test_requeue_of_an_unknown_or_sent_id_exits_1_with_a_message(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    r = cli("requeue", "--id", "9999", "--config", str(cfg))
    assert r.code == 1 and "send #9999 does not exist" in r.err
    r = cli("requeue", "--id", "1", "--config", str(cfg), "--json")
    assert r.code == 1 and "is sent, not uncertain or failed" in json.loads(r.out)["problems"][0]


def test_suppress_add_validates_addresses_and_goes_through_beside_a_worker(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    r = cli("suppress", "add", "not-an-email", "ok@example.com", "--config", str(cfg))
    assert r.code == 1 and "'not-an-email'" in r.err and "not an address" in r.err
    assert db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT email FROM suppressions") == [("ok@example.com",)]
    from filelock import FileLock

    lock = FileLock(str(tmp_path / "ws" / "var" / "crm.sqlite.lock"))
    with lock.acquire(timeout=0):  # a worker runs: the suppression list is still edited (issue #19)
        r = cli("suppress", "add", "x@example.com", "--config", str(cfg))
        assert r.code == 0, r.err
        r = cli("suppress", "remove", "ok@example.com", "--config", str(cfg))
        assert r.code == 0, r.err
    assert db_rows(tmp_path / "ws" / "var" / "crm.sqlite", "SELECT email FROM suppressions") == [("x@example.com",)]


def test_restored_rows_count_as_added_back(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    path = tmp_path / "ws" / "customers.csv"
    saved = path.read_bytes()
    assert cli("sync", "--config", str(cfg)).code == 0
    path.write_text("Email,Name,Stage,Owner\n", encoding="utf-8")  # someone wiped the sheet
    r = cli("sync", "--config", str(cfg), "--json")
    assert stages(r)["sync"]["stats"]["removed"] == 3
    path.write_bytes(saved)  # ... and restored it
    os.utime(path)
    r = cli("sync", "--config", str(cfg), "--json")
    st = stages(r)["sync"]["stats"]
    assert st["added"] == 3 and st["returned"] == 3
