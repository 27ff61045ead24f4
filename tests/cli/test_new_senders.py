"""``[mailbox] new_senders = "add_to_sheet"`` adds people, never ours, owners, lists or robots (issue #17 item 9).

A real CSV sheet and Maildir through the CLI in-process, and the decision
itself (:func:`crm_automation.inbound.decide`), which says why a sender is
not added.
"""

from __future__ import annotations

import csv
import json

import pytest

from crm_automation.inbound import InboundPolicy, decide
from crm_automation.models import Classification, Kind, RawMessage
from crm_automation.reading import Reading
from tests.fixtures.core import db_rows, make_workspace

ADD = ('source = "maildir"\npath = "inbox"\nnew_senders = "add_to_sheet"\nusername = "inbox-user@example.com"')
OUTBOUND = ('transport = "outbox"\noutbox = "var/outbox"\nreply_to = "replies@example.com"\n'
            'unsubscribe_mailto = "unsub@example.com"')

# (file, From, extra headers, added to the sheet?)
SENDERS = [
    ("lead", "New Lead <lead@prospect.example.cn>", "", True),
    ("sales_tool", "Pat Seller <pat@vendor.example.com>", "List-Unsubscribe: <mailto:u@tool.example.net>\r\n", True),
    ("own_from", "Sales <sales@example.com>", "", False),
    ("own_reply_to", "replies@example.com", "", False),
    ("own_unsub", "unsub@example.com", "", False),
    ("own_username", "inbox-user@example.com", "", False),
    ("owner", "Olivia Owner <owner@example.com>", "", False),
    ("list_id", "news@shop.example.org", "List-Id: Shop news <news.shop.example.org>\r\n", False),
    ("bulk", "offers@deals.example.net", "Precedence: bulk\r\n", False),
    ("list_unsub_with_precedence", "digest@media.example.net",
     "List-Unsubscribe: <https://media.example.net/u>\r\nPrecedence: normal\r\n", False),
    ("noreply", "noreply@service.example.com", "", False),
    ("no_reply", "Shop <no-reply@shop.example.com>", "", False),
    ("donotreply", "donotreply@bank.example.com", "", False),
    ("notifications", "GitHub <notifications@github.example.com>", "", False),
    ("robot_name", "系统通知（请勿回复） <service@portal.example.cn>", "", False),
]


def test_add_to_sheet_adds_people_and_never_ours_owners_lists_or_robots(tmp_path, cli):
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, mailbox=ADD, outbound=OUTBOUND)
    for i, (name, frm, extra, _) in enumerate(SENDERS):
        (ws / "inbox" / "new" / f"{i}.{name}").write_bytes(
            (f"From: {frm}\r\nTo: sales@example.com\r\nSubject: Hello {i}\r\nMessage-ID: <sender-{i}@example.org>\r\n"
             f"{extra}Date: Sat, 28 Nov 2026 09:00:00 +0800\r\nMIME-Version: 1.0\r\n"
             "Content-Type: text/plain; charset=utf-8\r\n\r\nWe would like a price list.\r\n").encode())
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 0, r.out + r.err
    rows = list(csv.DictReader((ws / "customers.csv").open(encoding="utf-8")))
    added = {x["Email"] for x in rows} - {"c0@example.com", "c1@example.com", "c2@example.com"}
    assert added == {"lead@prospect.example.cn", "pat@vendor.example.com"}
    fetch = next(x for x in json.loads(r.out)["stages"] if x["job"] == "fetch")
    assert fetch["stats"]["added_to_sheet"] == 2
    assert fetch["stats"]["not_added_to_sheet"] == sum(not ok for *_, ok in SENDERS)
    # The log says why, one line per sender (INFO, on stderr).
    lines = [line.split("new sender ", 1)[1] for line in r.err.splitlines() if "not added to the sheet: " in line]
    reasons = dict(line.split(" not added to the sheet: ", 1) for line in lines)
    assert reasons["sales@example.com"] == "our own address (outbound.from)"
    assert reasons["replies@example.com"] == "our own address (outbound.reply_to)"
    assert reasons["unsub@example.com"] == "our own address (outbound.unsubscribe_mailto)"
    assert reasons["inbox-user@example.com"] == "our own address (mailbox.username)"
    assert reasons["owner@example.com"] == "an owner in the sheet"
    assert reasons["news@shop.example.org"].startswith("list mail (header List-Id")
    assert reasons["offers@deals.example.net"] == "bulk mail (header Precedence: bulk)"
    assert reasons["digest@media.example.net"].startswith("bulk mail (headers List-Unsubscribe and Precedence")
    assert reasons["noreply@service.example.com"] == "a robot address (noreply@)"
    assert reasons["notifications@github.example.com"] == "a robot address (notifications@)"
    assert reasons["service@portal.example.cn"].startswith("a robot sender (display name")
    # Still logged, as unknown senders: nothing is dropped.
    assert db_rows(ws / "var" / "crm.sqlite", "SELECT COUNT(*) FROM activities WHERE kind = 'email_in'") == [
        (len(SENDERS),)]


def reading(frm: str, *, bulk: str = "", kind: Kind = Kind.EMAIL_IN, name: str = "") -> Reading:
    return Reading("<m@x>", frm, name, ("sales@example.com",), "Hi", None, None, (), "Hi",
                   Classification(kind, "no sign"), "d", bulk)


def decided(r: Reading, owners=frozenset()):
    policy = InboundPolicy(max_bytes=1 << 20, unsubscribe_addresses=frozenset(), notify_owner=False,
                           soft_bounce_limit=3, soft_bounce_days=30, email_field="email", email_fields=("email",),
                           own_addresses={"sales@example.com": "outbound.from"}, add_senders=True)
    raw = RawMessage("INBOX", 1, 1, b"")
    return decide(raw, r, "maildir", None, policy, {}, lambda ids: {}, lambda key: None, lambda: "<n@x>",
                  owners=owners)


@pytest.mark.parametrize(("frm", "bulk", "owners", "why"), [
    ("sales@example.com", "", frozenset(), "our own address (outbound.from)"),
    ("boss@example.com", "", frozenset({"boss@example.com"}), "an owner in the sheet"),
    ("news@x.example", "list mail (header List-Id: x)", frozenset(), "list mail (header List-Id: x)"),
    ("no-reply@x.example", "", frozenset(), "a robot address (no-reply@)"),
    ("mailer-daemon@x.example", "", frozenset(), "a robot address (mailer-daemon@)"),
    ("postmaster@x.example", "", frozenset(), "a robot address (postmaster@)"),
    ("10000@qq.com", "", frozenset(), "a known robot address (10000@qq.com)"),
])
def test_the_decision_says_why_a_sender_is_not_new(frm, bulk, owners, why):
    d = decided(reading(frm, bulk=bulk), owners)
    assert d.new_sender is None
    assert d.not_new_sender == (frm, why)


@pytest.mark.parametrize("frm", ["alice@example.org", "noreen.ply@example.org", "info@shop.example.cn",
                                 "notifier-team-lead@example.org"])
def test_people_are_new_senders(frm):
    d = decided(reading(frm, name="Alice"))
    assert d.new_sender == (frm, "Alice")
    assert d.not_new_sender is None
