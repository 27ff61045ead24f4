"""Unsubscribes reach the right customer (issue #17 item 6).

The ``List-Unsubscribe`` mailto carries the send's token in its subject; an
unsubscribe request carrying it suppresses the customer the token names,
whichever address it comes from. A CSV workspace with a Maildir inbox and
the outbox transport: the messages the worker wrote are read back from the
outbox, and the requests are written the way a mail client's unsubscribe
button sends them (to the mailto address, with the URI's subject).
"""

from __future__ import annotations

import email
import json
import sqlite3
from email.message import Message
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.fixtures.core import db_rows, make_workspace

CAMPAIGN = ('[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
            'follow_up = [{ after_days = 3, template = "hello" }]\n')
_n = 0


def sent_messages(ws: Path) -> dict[str, Message]:
    """The outbox's messages by recipient address."""
    out = {}
    for p in sorted((ws / "var" / "outbox").glob("*.eml")):
        msg = email.message_from_bytes(p.read_bytes())
        out[email.utils.parseaddr(msg["To"])[1].lower()] = msg
    return out


def mailto_of(msg: Message) -> tuple[str, str]:
    """(address, subject) of the List-Unsubscribe mailto, as a mail client reads the URI (RFC 6068)."""
    value = str(msg["List-Unsubscribe"])
    uri = next(part.strip().strip("<>") for part in value.split(",") if part.strip().startswith("<mailto:"))
    parts = urlsplit(uri)
    query = dict(item.split("=", 1) for item in parts.query.split("&"))
    return unquote(parts.path), unquote(query["subject"])


def request(ws: Path, *, frm: str, to: str, subject: str, body: str = "This message was automatically generated "
            "by Gmail.") -> None:
    """An unsubscribe request as Gmail's button sends it: to the mailto address, with its subject and a body line."""
    global _n
    _n += 1
    raw = (f"From: {frm}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <unsub-{_n}@mail.example.net>\r\n"
           f"Date: Sat, 28 Nov 2026 09:00:00 +0800\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           f"\r\n{body}\r\n").encode()
    (ws / "inbox" / "new" / f"{_n}.unsub").write_bytes(raw)


def sent_ws(tmp_path: Path, cli, **kw) -> tuple[Path, Path, Path]:
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, campaigns=CAMPAIGN, **kw)
    r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00")
    assert r.code == 0, r.err
    return ws, cfg, ws / "var" / "crm.sqlite"


def suppressed(db: Path) -> dict[str, str]:
    return dict(db_rows(db, "SELECT email, reason FROM suppressions"))


def unsubscribe_details(db: Path) -> list[dict]:
    return [json.loads(d) for (d,) in db_rows(db, "SELECT details FROM activities WHERE kind = 'unsubscribe'")]


def test_the_mailto_carries_the_send_token_in_its_subject(tmp_path, cli):
    ws, _cfg, db = sent_ws(tmp_path, cli)
    ids = dict(db_rows(db, "SELECT customer_key, message_id FROM sends WHERE campaign = 'hello'"))
    msgs = sent_messages(ws)
    assert set(msgs) == set(ids)
    for addr, msg in msgs.items():
        to, subject = mailto_of(msg)
        assert to == "sales@example.com"
        token = ids[addr].strip("<>").partition("@")[0]
        assert subject == f"unsubscribe {token}"
        assert msg["Message-ID"] == ids[addr]
    # Tokens differ per send: one customer's link never names another.
    assert len({mailto_of(m)[1] for m in msgs.values()}) == len(msgs)


def test_an_unsubscribe_from_another_account_suppresses_the_customer_the_token_names(tmp_path, cli):
    ws, cfg, db = sent_ws(tmp_path, cli)
    to, subject = mailto_of(sent_messages(ws)["c1@example.com"])
    # The customer unsubscribes from their private account, which the sheet does not know.
    request(ws, frm="Customer One <c1.private@mail.example.net>", to=to, subject=subject)
    r = cli("fetch", "--config", str(cfg), "--now", "2026-11-28T10:00")
    assert r.code == 0, r.err
    assert suppressed(db) == {"c1@example.com": "unsubscribed", "c1.private@mail.example.net": "unsubscribed"}
    assert dict(db_rows(db, "SELECT key, email_status FROM customers"))["c1@example.com"] == "unsubscribed"
    (details,) = unsubscribe_details(db)
    assert details["matched_by"].startswith("unsubscribe token crm.")
    assert details["token_customer"] == "c1@example.com"
    assert details["from"] == "c1.private@mail.example.net"
    assert db_rows(db, "SELECT customer_key FROM activities WHERE kind = 'unsubscribe'") == [("c1@example.com",)]
    # The follow-up is not sent to c1; the others still get theirs.
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-12-01T10:00").code == 0
    followups = dict(db_rows(db, "SELECT customer_key, status FROM sends WHERE campaign = 'hello' AND step = 1"))
    assert followups["c1@example.com"] == "skipped"
    assert followups["c0@example.com"] == followups["c2@example.com"] == "sent"


def test_the_token_still_names_the_customer_after_the_from_domain_changed(tmp_path, cli):
    ws, cfg, db = sent_ws(tmp_path, cli)
    to, subject = mailto_of(sent_messages(ws)["c2@example.com"])
    text = cfg.read_text(encoding="utf-8").replace("sales@example.com", "sales@new-brand.example.org")
    cfg.write_text(text, encoding="utf-8")
    request(ws, frm="someone.else@mail.example.net", to="sales@new-brand.example.org", subject=subject)
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-28T10:00").code == 0
    assert suppressed(db)["c2@example.com"] == "unsubscribed"
    assert unsubscribe_details(db)[0]["token_customer"] == "c2@example.com"


def test_a_token_of_one_customer_from_another_customers_address_suppresses_only_the_token_s(tmp_path, cli):
    """Customer c0 forwards c1's mail, or types c1's token: the token wins, c0 is left alone, both are recorded."""
    ws, cfg, db = sent_ws(tmp_path, cli)
    _to, subject = mailto_of(sent_messages(ws)["c1@example.com"])
    request(ws, frm="c0@example.com", to="sales@example.com", subject=subject)
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-28T10:00").code == 0
    assert suppressed(db) == {"c1@example.com": "unsubscribed"}
    statuses = dict(db_rows(db, "SELECT key, email_status FROM customers"))
    assert statuses["c1@example.com"] == "unsubscribed"
    assert statuses["c0@example.com"] == "ok"
    (details,) = unsubscribe_details(db)
    assert details["token_customer"] == "c1@example.com"
    assert details["sender_customer"] == "c0@example.com"
    assert details["from"] == "c0@example.com"
    assert "c0@example.com" in details["note"] and "c1@example.com" in details["note"]


@pytest.mark.parametrize("subject", [
    "unsubscribe crm.00000000000000000000000000000000",   # well-formed, names no send
    "unsubscribe crm.0123456789abcdef",                   # garbled (cut short)
])
def test_a_token_that_names_no_send_falls_back_to_the_sender(tmp_path, cli, subject):
    ws, cfg, db = sent_ws(tmp_path, cli)
    request(ws, frm="c2@example.com", to="sales@example.com", subject=subject)
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-28T10:00").code == 0
    assert suppressed(db) == {"c2@example.com": "unsubscribed"}
    (details,) = unsubscribe_details(db)
    assert details["matched_by"] == "sender address"
    assert details["token_unknown"] is True
    assert details["token"] == subject.split()[1]


def test_a_garbled_token_from_a_stranger_suppresses_no_customer(tmp_path, cli):
    ws, cfg, db = sent_ws(tmp_path, cli)
    _to, subject = mailto_of(sent_messages(ws)["c1@example.com"])
    request(ws, frm="stranger@mail.example.net", to="sales@example.com", subject=subject[:-3] + "zzz")
    assert cli("fetch", "--config", str(cfg), "--now", "2026-11-28T10:00").code == 0
    assert suppressed(db) == {"stranger@mail.example.net": "unsubscribed"}
    assert set(dict(db_rows(db, "SELECT key, email_status FROM customers")).values()) == {"ok"}


def test_the_token_lookup_is_one_indexed_query(tmp_path, cli):
    _ws, _cfg, db = sent_ws(tmp_path, cli)
    from crm_automation.store.repo import Store

    store = Store.open(db)
    try:
        (mid,) = db_rows(db, "SELECT message_id FROM sends WHERE customer_key = 'c0@example.com' AND step = 0")[0]
        token = mid.strip("<>").partition("@")[0]
        ref = store.send_for_token(token)
        assert ref is not None and ref.customer_key == "c0@example.com" and ref.campaign == "hello"
        assert store.send_for_token(token[:-1]) is None
        assert store.send_for_token("") is None
    finally:
        store.close()
    conn = sqlite3.connect(db)
    try:
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT DISTINCT customer_key, campaign, step FROM sends WHERE message_id >= ? "
            "AND message_id < ? AND campaign != ? LIMIT 2", ("<a@", "<aA", "owner-notify")))
    finally:
        conn.close()
    assert "USING INDEX" in plan and "message_id" in plan, plan


# -- the token's grammar (crm_automation.tokens) -----------------------------------------------------------------

TOKEN = "crm.0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(("subject", "request_subject", "token"), [
    (f"unsubscribe {TOKEN}", True, TOKEN),
    (f"Unsubscribe: {TOKEN}", True, TOKEN),
    (f"退订 {TOKEN}", True, TOKEN),
    ("unsubscribe", True, None),                         # a mailto from before the token, or a client that drops it
    ("unsubscribe newsletters", False, None),            # words are no token
    (f"Re: unsubscribe {TOKEN}", False, TOKEN),          # not our mailto's subject, but the token is still read
    ("Re: Offer", False, None),
])
def test_request_subjects_and_their_tokens(subject, request_subject, token):
    from crm_automation.tokens import is_request_subject, token_in_subject

    assert is_request_subject(subject) is request_subject
    assert token_in_subject(subject) == token


def test_the_gmail_button_s_message_is_an_unsubscribe_not_an_automatic_message():
    from crm_automation.classify import classify
    from tests.unit.test_classify import make

    text = "This message was automatically generated by Gmail."
    result = classify(make(subject=f"unsubscribe {TOKEN}", text=text, reply=text))
    assert result.kind.value == "unsubscribe", result.evidence
