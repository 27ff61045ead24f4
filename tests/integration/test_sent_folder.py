"""Issue #21: the team's replies, read from the real Sent folder of a real Dovecot, answer customer mail.

A customer's mail is *waiting* until a message of ours names it
(In-Reply-To/References) or we write to that customer later. The Sent
folder is found by its special-use flag (RFC 6154) when ``sent_folder`` is
not set; each reply is logged once, however often it is read.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from crm_automation.app import sales
from crm_automation.contact import Direction
from crm_automation.workspace import Workspace
from tests.fixtures.core import db_rows, make_workspace
from tests.fixtures.dovecot import Account, Dovecot, require_dovecot, start_dovecot

pytestmark = pytest.mark.integration
SH = ZoneInfo("Asia/Shanghai")
SENT = "已发送"  # 163.com's name for it: found only by its \Sent flag, never by a usual English name


def mutf7(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 §5.1.3), for the stdlib-imaplib helpers of the fixture."""
    import base64

    out, run = "", ""
    for ch in [*name, None]:
        if ch is not None and not (0x20 <= ord(ch) <= 0x7E):
            run += ch
            continue
        if run:
            out += "&" + base64.b64encode(run.encode("utf-16-be")).decode().rstrip("=").replace("/", ",") + "-"
            run = ""
        if ch is not None:
            out += "&-" if ch == "&" else ch
    return out


SENT_WIRE = mutf7(SENT)
SPECIAL_USE = f"""namespace inbox {{
  inbox = yes
  mailbox {SENT} {{
    auto = subscribe
    special_use = \\Sent
  }}
}}
"""


@pytest.fixture(scope="module")
def flagged_dovecot() -> Iterator[Dovecot]:
    """A Dovecot whose users have a Sent folder flagged ``\\Sent`` (special-use, as QQ Mail and 163.com do)."""
    require_dovecot()
    server = start_dovecot(extra_conf=SPECIAL_USE)
    try:
        yield server
    finally:
        server.stop()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SH)


def mail(frm: str, to: str, mid: str, date: str, subject: str, *, answers: str = "", refs: str = "") -> bytes:
    head = f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\nDate: {date}\r\n"
    if answers:
        head += f"In-Reply-To: {answers}\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    return (head + "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nText.\r\n").encode()


def imap_workspace(root, account: Account, monkeypatch, outbound: str = ""):
    cfg = make_workspace(root, outbound='transport = "outbox"\noutbox = "var/outbox"\n' + outbound, mailbox=(
        f'source = "imap"\nhost = "{account.server.host}"\nport = {account.server.port}\nsecurity = "none"\n'
        f'username = "{account.user}"\npassword_env = "TEST_IMAP_PASSWORD"'))
    monkeypatch.setenv("TEST_IMAP_PASSWORD", account.password)
    return cfg


def test_replies_in_the_flagged_sent_folder_answer_customer_mail_once(tmp_path, flagged_dovecot, monkeypatch, cli):
    account = flagged_dovecot.add_user()
    cfg = imap_workspace(tmp_path / "ws", account, monkeypatch)
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-09T08:00").code == 0
    account.append([
        mail("c0@example.com", "sales@example.com", "<q0@example.com>", "Mon, 09 Nov 2026 09:00:00 +0800", "Price?"),
        mail("c1@example.com", "sales@example.com", "<q1@example.com>", "Mon, 09 Nov 2026 09:10:00 +0800", "Stock?"),
        mail("c2@example.com", "sales@example.com", "<q2@example.com>", "Mon, 09 Nov 2026 09:20:00 +0800", "Hi"),
    ])
    account.append([
        # to c0 itself, naming its mail
        mail("li@example.com", "c0@example.com", "<a0@example.com>", "Mon, 09 Nov 2026 11:00:00 +0800",
             "Re: Price?", answers="<q0@example.com>"),
        # to c1's colleague (not in the sheet), naming c1's mail only in References
        mail("li@example.com", "buyer@c1.example.com", "<a1@example.com>", "Mon, 09 Nov 2026 11:30:00 +0800",
             "Re: Stock?", refs="<older@example.com> <q1@example.com>"),
        # to a supplier, about nothing in the log: not the log's business
        mail("li@example.com", "supplier@example.net", "<s1@example.com>", "Mon, 09 Nov 2026 12:00:00 +0800",
             "Order"),
    ], folder=SENT_WIRE)
    r = cli("fetch", "--config", str(cfg), "--now", "2026-11-09T13:00", "--json")
    assert r.code == 0, r.out + r.err
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    rows = db_rows(db, "SELECT customer_key, message_id, in_reply_to, json_extract(details, '$.answers') "
                       "FROM activities WHERE kind = 'reply_out' ORDER BY id")
    assert rows == [("c0@example.com", "<a0@example.com>", "<q0@example.com>", '["<q0@example.com>"]'),
                    ("c1@example.com", "<a1@example.com>", None, '["<q1@example.com>","<older@example.com>"]')]

    ws = Workspace.load(cfg)
    waiting = sales.waiting(ws, at("2026-11-10T12:00"))
    assert [m.message_id for m in waiting.mail] == ["<q2@example.com>"]  # only c2's mail is unanswered
    assert waiting.mail[0].overdue  # Monday 09:20 to Tuesday 12:00: 8h40 + 3h working hours
    c0 = sales.contact(ws, "c0@example.com", at("2026-11-10T12:00")).customer
    assert c0.last_contact is not None
    assert (c0.last_contact.at, c0.last_contact.direction) == (at("2026-11-09T11:00"), Direction.OUT)

    # read again, and read from the start (a lost cursor, a new UIDVALIDITY): still logged once each
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-09T14:00").code == 0
    con = sqlite3.connect(db)
    con.execute("DELETE FROM mailbox_state WHERE folder = ?", (SENT,))
    con.commit()
    con.close()
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-09T15:00").code == 0
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'reply_out'") == [(2,)]
    # nothing in the Sent folder was moved, flagged or deleted
    assert len(account.uids(SENT_WIRE)) == 3 and account.seen_uids(SENT_WIRE) == []


def test_a_configured_sent_folder_wins_and_a_missing_one_reads_nothing(tmp_path, dovecot, monkeypatch, cli):
    account = dovecot.add_user()
    cfg = imap_workspace(tmp_path / "ws", account, monkeypatch, outbound='sent_folder = "Gesendet"\n')
    assert cli("sync", "--config", str(cfg), "--now", "2026-11-09T08:00").code == 0
    account.append([mail("c0@example.com", "sales@example.com", "<q0@example.com>",
                         "Mon, 09 Nov 2026 09:00:00 +0800", "Price?")])
    r = cli("fetch", "--config", str(cfg), "--now", "2026-11-09T10:00")
    assert r.code == 0, r.out + r.err  # no such folder yet: a warning, the inbox is read all the same
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    assert db_rows(db, "SELECT COUNT(*) FROM activities WHERE kind = 'email_in'") == [(1,)]
    account.append([mail("li@example.com", "c0@example.com", "<a0@example.com>", "Mon, 09 Nov 2026 11:00:00 +0800",
                         "Re: Price?", answers="<q0@example.com>")], folder="Gesendet")
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-09T12:00").code == 0
    assert db_rows(db, "SELECT customer_key FROM activities WHERE kind = 'reply_out'") == [("c0@example.com",)]
    assert sales.waiting(Workspace.load(cfg), at("2026-11-10T12:00")).mail == ()


def test_read_sent_false_reads_no_sent_folder(tmp_path, flagged_dovecot, monkeypatch, cli):
    account = flagged_dovecot.add_user()
    cfg = imap_workspace(tmp_path / "ws", account, monkeypatch)
    cfg.write_text(cfg.read_text(encoding="utf-8").replace('password_env = "TEST_IMAP_PASSWORD"',
                                                           'password_env = "TEST_IMAP_PASSWORD"\nread_sent = false'),
                   encoding="utf-8")
    account.append([mail("li@example.com", "c0@example.com", "<a0@example.com>", "Mon, 09 Nov 2026 11:00:00 +0800",
                         "Hello")], folder=SENT_WIRE)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-09T12:00").code == 0
    assert db_rows(tmp_path / "ws" / "var" / "crm.sqlite",
                   "SELECT COUNT(*) FROM activities WHERE kind = 'reply_out'") == [(0,)]
