"""Issue #21 through the worker: last contact, staleness and waiting mail, read by ``app/sales.py``.

A CSV workspace with a Maildir inbox and the outbox transport, driven by
``run --once --now``; the use cases read the log the worker wrote.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from crm_automation.app import sales
from crm_automation.contact import Direction, QuietSince
from crm_automation.workspace import Workspace
from tests.fixtures.core import CSV_MAPPING, make_workspace

SH = ZoneInfo("Asia/Shanghai")
STALE = CSV_MAPPING + "[stale_after_days]\nlead = 7\n"
_n = 0


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SH)


def drop(ws, raw: str) -> None:
    global _n
    _n += 1
    (ws / "inbox" / "new" / f"{_n}.msg").write_bytes(raw.replace("\n", "\r\n").encode())


def reply(who: str, mid: str, date: str, *, extra: str = "", subject: str = "Re: hello") -> str:
    return (f"From: {who}\nTo: sales@example.com\nSubject: {subject}\nMessage-ID: {mid}\nDate: {date}\n{extra}"
            "\nYes please, send me the quote.\n")


def bounce(recipient: str) -> str:
    return ("From: MAILER-DAEMON@mx.example.net\nTo: sales@example.com\nSubject: Undelivered Mail Returned to "
            "Sender\nMessage-ID: <b-1@mx.example.net>\nDate: Tue, 10 Nov 2026 09:30:00 +0800\n"
            "Auto-Submitted: auto-replied\nMIME-Version: 1.0\n"
            'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\n\n'
            "--R\nContent-Type: text/plain\n\nThis is the mail system.\n"
            "--R\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
            f"Final-Recipient: rfc822; {recipient}\nAction: failed\nStatus: 5.1.1\n\n--R--\n")


@pytest.fixture
def ws_path(tmp_path):
    return tmp_path / "ws"


def run(cli, cfg, now: str) -> None:
    r = cli("run", "--once", "--config", str(cfg), "--now", now)
    assert r.code == 0, r.out + r.err


def test_stale_on_the_right_day_and_not_after_a_reply(ws_path, cli):
    cfg = make_workspace(ws_path, mapping=STALE, extra_config="notify_owner = true\n")
    run(cli, cfg, "2026-11-02T10:00")  # Monday: three customers first seen, stage "lead" (limit 7)
    ws = Workspace.load(cfg)
    assert sales.stale(ws, at("2026-11-09T23:59")).customers == ()  # 7 days quiet: not more than 7
    found = sales.stale(ws, at("2026-11-10T00:01"))
    assert [c.key for c in found.customers] == ["c0@example.com", "c1@example.com", "c2@example.com"]
    first = found.customers[0]
    assert (first.quiet.days, first.quiet.by, first.last_contact, first.stage, first.owner) == (
        8, QuietSince.FIRST_SEEN, None, "lead", "owner@example.com")

    # Tuesday: c0 replies; c1's answer is an out-of-office; c2's address bounces
    drop(ws_path, reply("c0@example.com", "<r0@example.com>", "Tue, 10 Nov 2026 09:00:00 +0800"))
    drop(ws_path, reply("c1@example.com", "<ooo1@example.com>", "Tue, 10 Nov 2026 09:05:00 +0800",
                        extra="Auto-Submitted: auto-replied\n", subject="Automatic reply: hello"))
    drop(ws_path, bounce("c2@example.com"))
    run(cli, cfg, "2026-11-10T10:00")  # logs them; forwards c0's reply to the owner (not contact with c0)

    found = sales.stale(ws, at("2026-11-10T11:00"))
    assert [c.key for c in found.customers] == ["c1@example.com", "c2@example.com"]  # the auto-reply and the
    assert all(c.last_contact is None for c in found.customers)                     # bounce are no contact
    view = sales.contact(ws, "c0@example.com", at("2026-11-10T11:00"))
    assert view.customer.last_contact is not None
    assert (view.customer.last_contact.at, view.customer.last_contact.direction) == (
        at("2026-11-10T09:00"), Direction.IN)  # the owner's notification at 10:00 is not contact
    assert (view.customer.quiet.days, view.customer.stale) == (0, False)
    # c0 becomes stale again 8 local days after the reply
    assert [c.key for c in sales.stale(ws, at("2026-11-18T08:00")).customers] == [
        "c1@example.com", "c2@example.com", "c0@example.com"]
    assert sales.stale(ws, at("2026-11-18T08:00"), owner="OWNER@example.com").customers[0].key == "c1@example.com"
    assert sales.stale(ws, at("2026-11-18T08:00"), owner="other@example.com").customers == ()


def test_a_reply_waits_in_working_hours_until_we_write_again(ws_path, cli):
    campaign = ('[[campaign]]\nid = "quote"\ntemplate = "hello"\ntrigger = "change"\nfield = "stage"\n'
                'to = "quote"\n')
    cfg = make_workspace(ws_path, mapping=STALE, campaigns=campaign, extra_config="notify_owner = true\n")
    run(cli, cfg, "2026-11-02T10:00")
    drop(ws_path, reply("c0@example.com", "<r0@example.com>", "Fri, 06 Nov 2026 17:00:00 +0800"))
    run(cli, cfg, "2026-11-06T17:10")
    ws = Workspace.load(cfg)

    w = sales.waiting(ws, at("2026-11-09T10:00"))  # Monday 10:00: Friday's last hour and Monday's first
    assert [(m.key, m.message_id) for m in w.mail] == [("c0@example.com", "<r0@example.com>")]
    assert (w.mail[0].working_hours, w.mail[0].overdue, w.overdue) == (pytest.approx(2.0), False, ())
    w = sales.waiting(ws, at("2026-11-09T17:30"))  # 1 + 8.5 working hours: more than 8
    assert (w.mail[0].working_hours, w.mail[0].overdue) == (pytest.approx(9.5), True)
    assert w.to_json()["overdue"] == 1 and w.to_json()["mail"][0]["working_hours"] == 9.5
    assert sales.waiting(ws, at("2026-11-09T17:30"), owner="nobody@example.com").mail == ()

    # the team moves c0 to "quote" in the sheet: the campaign mails c0, which answers the reply and is contact
    text = (ws_path / "customers.csv").read_text(encoding="utf-8").replace(
        "c0@example.com,Customer 0,lead", "c0@example.com,Customer 0,quote")
    (ws_path / "customers.csv").write_text(text, encoding="utf-8")
    run(cli, cfg, "2026-11-10T09:00")
    assert sales.waiting(ws, at("2026-11-10T12:00")).mail == ()
    view = sales.contact(ws, "c0@example.com", at("2026-11-10T12:00"))
    assert view.customer.last_contact is not None and view.customer.last_contact.direction is Direction.OUT
    assert view.customer.stage == "quote" and view.customer.stage_since.astimezone(SH).date().isoformat() == \
        "2026-11-10"
    assert view.to_json()["last_contact_by"] == "out" and view.waiting == ()


def test_without_stale_after_days_nobody_is_stale(ws_path, cli):
    cfg = make_workspace(ws_path)
    run(cli, cfg, "2026-11-02T10:00")
    assert sales.stale(Workspace.load(cfg), at("2027-11-02T10:00")).customers == ()


def test_contact_of_an_unknown_key_is_a_config_error(ws_path, cli):
    from crm_automation.errors import ConfigError

    cfg = make_workspace(ws_path, mapping=STALE)
    run(cli, cfg, "2026-11-02T10:00")
    with pytest.raises(ConfigError, match="'nobody@example.com' is not in the log"):
        sales.contact(Workspace.load(cfg), "nobody@example.com", at("2026-11-02T10:00"))


def test_a_maildir_sent_folder_answers_a_reply(ws_path, cli):
    """Maildir marks no folder as Sent: ``[outbound] sent_folder`` names it (``.Sent`` on disk, Maildir++)."""
    cfg = make_workspace(ws_path, mapping=STALE, outbound='transport = "outbox"\noutbox = "var/outbox"\n'
                                                         'sent_folder = "Sent"')
    for sub in ("new", "cur", "tmp"):
        (ws_path / "inbox" / ".Sent" / sub).mkdir(parents=True)
    run(cli, cfg, "2026-11-02T10:00")
    drop(ws_path, reply("c0@example.com", "<r0@example.com>", "Mon, 09 Nov 2026 09:00:00 +0800"))
    (ws_path / "inbox" / ".Sent" / "cur" / "1.a:2,S").write_bytes(
        b"From: li@example.com\r\nTo: c0@example.com\r\nSubject: Re: hello\r\nMessage-ID: <ours-1@example.com>\r\n"
        b"In-Reply-To: <r0@example.com>\r\nDate: Mon, 09 Nov 2026 10:00:00 +0800\r\n\r\nHere it is.\r\n")
    run(cli, cfg, "2026-11-09T11:00")
    run(cli, cfg, "2026-11-09T12:00")  # read again: logged once
    ws = Workspace.load(cfg)
    assert sales.waiting(ws, at("2026-11-10T12:00")).mail == ()
    view = sales.contact(ws, "c0@example.com", at("2026-11-10T12:00"))
    assert view.customer.last_contact is not None
    assert (view.customer.last_contact.at, view.customer.last_contact.direction) == (
        at("2026-11-09T10:00"), Direction.OUT)
    from tests.fixtures.core import db_rows

    assert db_rows(ws_path / "var" / "crm.sqlite", "SELECT COUNT(*), MIN(body) FROM activities "
                                                    "WHERE kind = 'reply_out'") == [(1, "Here it is.")]
