"""Issue #11 through the worker: every failed recipient, permanence by what happened, the soft-bounce score.

A CSV workspace with a Maildir inbox and the outbox transport; bounces are
RFC 3464 reports built here (the real-server shapes are in the corpus under
tests/data/eml/bounce/, checked by tests/unit/test_classify.py).
"""

from __future__ import annotations

import json

from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = ('[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
            'follow_up = [{ after_days = 3, template = "hello" }]\n')
_n = 0


def dsn(blocks: list[tuple[str, str, str]], *, original: str | None = None, subject: str = "Undelivered Mail "
        "Returned to Sender") -> bytes:
    """A Postfix-style delivery report: (recipient, action, status) blocks, quoting the original's headers."""
    global _n
    _n += 1
    fields = "".join(f"Final-Recipient: rfc822; {r}\r\nAction: {a}\r\nStatus: {s}\r\n\r\n" for r, a, s in blocks)
    quoted = (f"--R\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: Sales <sales@example.com>\r\n"
              f"Message-ID: {original}\r\nSubject: Hello\r\n\r\n") if original else ""
    return (f"From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\nTo: sales@example.com\r\n"
            f"Subject: {subject}\r\nMessage-ID: <bounce-{_n}@mx.example.net>\r\n"
            f"Date: Fri, 27 Nov 2026 09:00:00 +0800\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n\r\n'
            "--R\r\nContent-Type: text/plain\r\n\r\nThis is the mail system.\r\n"
            "--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
            f"{fields}{quoted}--R--\r\n").encode()


def drop(ws, raw: bytes) -> None:
    global _n
    _n += 1
    (ws / "inbox" / "new" / f"{_n}.bounce").write_bytes(raw)


def step0_ids(db) -> dict[str, str]:
    return dict(db_rows(db, "SELECT customer_key, message_id FROM sends WHERE campaign = 'hello' AND step = 0"))


def test_a_bounce_naming_two_customers_marks_both(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN)
    db = ws / "var" / "crm.sqlite"
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    drop(ws, dsn([("c0@example.com", "failed", "5.1.1"), ("c1@example.com", "failed", "5.1.1")]))
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T11:00", "--json")
    assert r.code == 0, r.err
    rows = db_rows(db, "SELECT customer_key, json_extract(details, '$.permanence') FROM activities "
                       "WHERE kind = 'bounce' ORDER BY customer_key")
    assert rows == [("c0@example.com", "hard"), ("c1@example.com", "hard")]
    assert dict(db_rows(db, "SELECT email, reason FROM suppressions")) == {
        "c0@example.com": "bounced", "c1@example.com": "bounced"}
    assert dict(db_rows(db, "SELECT key, email_status FROM customers")) == {
        "c0@example.com": "bounced", "c1@example.com": "bounced", "c2@example.com": "ok"}
    report = json.loads(cli("report", "--config", str(cfg), "--json").out)["campaigns"]
    assert next(c for c in report if c["step"] == 0)["bounced"] == 2
    # Fetched again (a restart): nothing is logged twice.
    assert cli("fetch", "--config", str(cfg)).code == 0
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'bounce'") == [(2,)]


def test_a_lost_message_stops_that_sequence_and_a_delay_does_not(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN)
    db = ws / "var" / "crm.sqlite"
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    ids = step0_ids(db)
    # c1's first email expired in the queue (Action failed, 4.4.7); c2's is only delayed.
    drop(ws, dsn([("c1@example.com", "failed", "4.4.7")], original=ids["c1@example.com"]))
    drop(ws, dsn([("c2@example.com", "delayed", "4.4.1")], original=ids["c2@example.com"],
                 subject="Delayed Mail (still being retried)"))
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-28T10:00").code == 0
    acts = {k: (p, c) for k, p, c in db_rows(
        db, "SELECT customer_key, json_extract(details, '$.permanence'), campaign FROM activities "
            "WHERE kind = 'bounce'")}
    assert acts == {"c1@example.com": ("soft", "hello"), "c2@example.com": ("delayed", "hello")}
    assert db_rows(db, "SELECT COUNT(*) FROM suppressions") == [(0,)]  # one soft bounce is not a dead address
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-30T10:01").code == 0
    steps = {k: (s, e) for k, s, e in db_rows(db, "SELECT customer_key, status, error FROM sends WHERE step = 1")}
    assert steps["c0@example.com"][0] == "sent"
    assert steps["c2@example.com"][0] == "sent"  # a delay warning is not a bounce
    assert steps["c1@example.com"][0] == "skipped" and "soft bounce" in steps["c1@example.com"][1]
    report = json.loads(cli("report", "--config", str(cfg), "--json").out)["campaigns"]
    assert next(c for c in report if c["step"] == 0)["bounced"] == 1  # the lost one, not the delay


def test_soft_bounce_score_suppresses_at_the_limit_counting_distinct_messages(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, extra_config="\n[inbound]\nsoft_bounce_limit = 3\nsoft_bounce_days = 30\n")
    db = ws / "var" / "crm.sqlite"
    assert cli("sync", "--config", str(cfg)).code == 0
    # Two reports about the same message (a delay warning, then the failure) count once.
    drop(ws, dsn([("c0@example.com", "delayed", "4.4.1")], original="<m1@example.com>"))
    drop(ws, dsn([("c0@example.com", "failed", "4.4.1")], original="<m1@example.com>"))
    drop(ws, dsn([("c0@example.com", "delayed", "4.2.2")], original="<m2@example.com>"))
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    assert db_rows(db, "SELECT COUNT(*) FROM suppressions") == [(0,)]
    drop(ws, dsn([("c0@example.com", "delayed", "4.2.2")], original="<m3@example.com>"))
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-28T10:00").code == 0
    (email, reason, source), = db_rows(db, "SELECT email, reason, source FROM suppressions")
    assert (email, reason) == ("c0@example.com", "soft_bounces") and "3 soft bounces within 30 days" in source
    assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'c0@example.com'") == [("bounced",)]


def test_a_reply_resets_the_soft_bounce_score(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, extra_config="\n[inbound]\nsoft_bounce_limit = 2\n")
    db = ws / "var" / "crm.sqlite"
    assert cli("sync", "--config", str(cfg)).code == 0
    drop(ws, dsn([("c1@example.com", "delayed", "4.4.1")], original="<a@example.com>"))
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    (ws / "inbox" / "new" / "reply.1").write_bytes(
        b"From: c1@example.com\r\nTo: sales@example.com\r\nSubject: Re: Hello\r\nMessage-ID: <r1@example.com>\r\n"
        b"Date: Sat, 28 Nov 2026 09:00:00 +0800\r\n\r\nGot it, thanks.\r\n")
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-28T10:00").code == 0
    drop(ws, dsn([("c1@example.com", "delayed", "4.4.1")], original="<b@example.com>"))
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-29T10:00").code == 0
    assert db_rows(db, "SELECT COUNT(*) FROM suppressions") == [(0,)]  # 1 since the reply, not 2
    drop(ws, dsn([("c1@example.com", "delayed", "4.4.1")], original="<c@example.com>"))
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-30T10:00").code == 0
    assert db_rows(db, "SELECT reason FROM suppressions") == [("soft_bounces",)]


def test_a_soft_bounce_limit_of_zero_turns_the_score_off(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, extra_config="\n[inbound]\nsoft_bounce_limit = 0\n")
    assert cli("sync", "--config", str(cfg)).code == 0
    for i in range(4):
        drop(ws, dsn([("c0@example.com", "failed", "4.4.7")], original=f"<x{i}@example.com>"))
    assert cli("fetch", "--config", str(cfg)).code == 0
    assert db_rows(ws / "var" / "crm.sqlite", "SELECT COUNT(*) FROM suppressions") == [(0,)]


def test_inbound_section_keys_are_checked(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", extra_config="\n[inbound]\nsoft_bounce_limt = 3\n")
    r = cli("check", "--config", str(cfg))
    assert r.code == 2 and "inbound.soft_bounce_limt" in r.out
    cfg = make_workspace(tmp_path / "ws2", extra_config="\n[inbound]\nsoft_bounce_days = -1\n")
    r = cli("check", "--config", str(cfg))
    assert r.code == 2 and "inbound.soft_bounce_days" in r.out


def test_a_free_text_postmaster_notice_naming_our_customer_is_a_bounce(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws)
    db = ws / "var" / "crm.sqlite"
    assert cli("sync", "--config", str(cfg)).code == 0
    (ws / "inbox" / "new" / "notice.1").write_bytes(
        b"From: postmaster@mail.example.net\r\nTo: sales@example.com\r\nSubject: Automatically rejected mail\r\n"
        b"Message-ID: <rej-1@mail.example.net>\r\nAuto-Submitted: auto-replied\r\nDate: Fri, 27 Nov 2026 09:00:00 "
        b"+0800\r\n\r\nYour message to C2@Example.com was automatically rejected:\r\nMailbox is full.\r\n")
    assert cli("fetch", "--config", str(cfg)).code == 0
    (key, kind, evidence), = db_rows(db, "SELECT customer_key, kind, json_extract(details, '$.evidence') "
                                         "FROM activities WHERE message_id = '<rej-1@mail.example.net>'")
    assert (key, kind) == ("c2@example.com", "bounce")
    assert "c2@example.com" in evidence


def test_a_recipient_refused_at_rcpt_as_unknown_is_a_hard_bounce(tmp_path, cli, smtpd):
    ws = tmp_path / "ws"
    outbound = (f'transport = "smtp"\nhost = "{smtpd.host}"\nport = {smtpd.port}\nsecurity = "none"\n'
                'timeout = 10')
    rows = [{"Email": f"c{i}@example.com", "Name": f"C{i}", "Stage": "lead", "Owner": ""} for i in range(6)]
    cfg = make_workspace(ws, rows=rows, campaigns=CAMPAIGN, outbound=outbound)
    db = ws / "var" / "crm.sqlite"
    for i in (1, 2, 3):  # three dead addresses in a row do not stop the pass: they are not a server problem
        smtpd.handler.reject[f"c{i}@example.com"] = f"550 5.1.1 <c{i}@example.com>: Recipient address rejected: " \
                                                    "User unknown in virtual mailbox table"
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 1, r.out + r.err
    assert sorted(m.message.get("To") for m in smtpd.messages) == [
        "C0 <c0@example.com>", "C4 <c4@example.com>", "C5 <c5@example.com>"]
    assert dict(db_rows(db, "SELECT email, reason FROM suppressions")) == {
        f"c{i}@example.com": "bounced" for i in (1, 2, 3)}
    bounces = db_rows(db, "SELECT customer_key, campaign, json_extract(details, '$.status'), "
                          "json_extract(details, '$.permanence') FROM activities WHERE kind = 'bounce' ORDER BY 1")
    assert bounces == [(f"c{i}@example.com", "hello", "5.1.1", "hard") for i in (1, 2, 3)]
    status = dict(db_rows(db, "SELECT key, email_status FROM customers"))
    assert status["c1@example.com"] == "bounced" and status["c0@example.com"] == "ok"
    # A 550 for another reason (a policy refusal) fails the send but is no bounce of the address.
    smtpd.handler.reject.clear()
    smtpd.handler.reject["c7@example.com"] = "550 5.7.1 Message rejected as spam"
    from tests.cli.test_hardening import add_row

    add_row(cfg, {"Email": "c7@example.com", "Name": "C7", "Stage": "lead", "Owner": ""})
    assert cli("run", "--once", "--config", str(cfg)).code == 1
    assert "c7@example.com" not in dict(db_rows(db, "SELECT email, reason FROM suppressions"))
    assert db_rows(db, "SELECT status FROM sends WHERE customer_key = 'c7@example.com'") == [("failed",)]


def test_bounces_of_unknown_recipients_are_linked_each_to_its_own_customer_later(tmp_path, cli):
    from tests.cli.test_hardening import add_row

    ws = tmp_path / "ws"
    cfg = make_workspace(ws, extra_config="\n[inbound]\nsoft_bounce_limit = 2\n")
    db = ws / "var" / "crm.sqlite"
    assert cli("sync", "--config", str(cfg)).code == 0
    # Neither address is a customer yet: a hard bounce naming both, and two soft bounces of y.
    drop(ws, dsn([("x@later.example.org", "failed", "5.1.1"), ("y@later.example.org", "failed", "4.4.7")]))
    drop(ws, dsn([("y@later.example.org", "failed", "4.4.7")], original="<y2@example.com>"))
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    assert dict(db_rows(db, "SELECT email, reason FROM suppressions")) == {
        "x@later.example.org": "bounced", "y@later.example.org": "soft_bounces"}
    add_row(cfg, {"Email": "y@later.example.org", "Name": "Y", "Stage": "lead", "Owner": ""})
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-27T10:05").code == 0
    linked = db_rows(db, "SELECT json_extract(details, '$.recipient'), customer_key FROM activities "
                         "WHERE kind = 'bounce' ORDER BY id")
    # x's failure stays x's: it is not attached to y because the same report named y too
    assert linked == [("x@later.example.org", None), ("y@later.example.org", "y@later.example.org"),
                      ("y@later.example.org", "y@later.example.org")]
    # suppressed by the soft-bounce score while unknown: the new row shows it as bounced
    assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'y@later.example.org'") == [("bounced",)]
