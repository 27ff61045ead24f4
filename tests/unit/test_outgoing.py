"""Which messages of the Sent folder are logged as the team's replies, and whose (issue #21, ``outgoing.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

from crm_automation.models import Kind, RawMessage, ReplyOutDetails
from crm_automation.outgoing import answers_of, decide_sent
from crm_automation.parse import parse

NOW = datetime(2026, 11, 9, 6, 0, tzinfo=UTC)
BY_EMAIL = {"c0@example.com": "c0@example.com", "c1@example.com": "c1@example.com"}
LOGGED = {"<q0@example.com>": "c0@example.com", "<q1@example.com>": "c1@example.com", "<u@x.example>": None}


def raw(to: str, mid: str = "<a@example.com>", extra: str = "") -> RawMessage:
    text = (f"From: li@example.com\r\nTo: {to}\r\nSubject: Re: Price\r\nMessage-ID: {mid}\r\n"
            f"Date: Mon, 09 Nov 2026 11:00:00 +0800\r\n{extra}\r\nOur price is 10.\r\n\r\n> old text\r\n")
    return RawMessage("Sent", 7, 1, text.encode())


def decide(r: RawMessage, own: frozenset[str] = frozenset()):
    return decide_sent(r, parse(r.raw), "imap://x/Sent", NOW, BY_EMAIL,
                       lambda ids: {i: LOGGED[i] for i in ids if i in LOGGED},
                       lambda ids: {i: True for i in ids if i in own})


def test_a_message_to_a_customer_is_their_contact():
    (a,) = decide(raw("Customer <C0@Example.com>, boss@example.com")).activities
    assert (a.kind, a.customer_key, a.message.reply.strip()) == (Kind.REPLY_OUT, "c0@example.com", "Our price is 10.")
    assert a.details == ReplyOutDetails(("c0@example.com", "boss@example.com"), (), "Sent", 7)
    assert a.occurred_at == datetime(2026, 11, 9, 3, 0, tzinfo=UTC)


def test_a_reply_to_someone_else_is_the_customer_s_whose_mail_it_answers():
    d = decide(raw("buyer@c1.example.com", extra="In-Reply-To: <q1@example.com>\r\n"))
    (a,) = d.activities
    assert (a.customer_key, a.details.answers) == ("c1@example.com", ("<q1@example.com>",))
    assert "answered message" in a.message.cls.evidence


def test_an_answer_to_an_unknown_sender_is_logged_without_a_customer():
    (a,) = decide(raw("new@x.example", extra="References: <u@x.example>\r\n")).activities
    assert a.customer_key is None and a.details.answers == ("<u@x.example>",)


def test_mail_to_others_and_the_worker_s_own_mail_are_not_logged():
    assert decide(raw("supplier@example.net")).activities == ()
    own = decide(raw("c0@example.com", mid="<campaign-1@example.com>"), own=frozenset({"<campaign-1@example.com>"}))
    assert (own.activities, own.label) == ((), "not_logged")  # a campaign step is already its email_out
    unreadable = decide_sent(RawMessage("Sent", 8, 1, b"x"), None, "s", NOW, BY_EMAIL, dict, dict)
    assert (unreadable.activities, unreadable.uid) == ((), 8)  # passed over; the cursor moves past it


def test_answers_are_in_reply_to_then_references_newest_first_once_each():
    m = parse(raw("c0@example.com", extra="In-Reply-To: <b@x>\r\nReferences: <a@x> <b@x>\r\n").raw)
    assert answers_of(m) == ("<b@x>", "<a@x>")
