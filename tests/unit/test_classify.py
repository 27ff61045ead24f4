"""classify(): the corpus (folder = expected kind) and one literal per rule."""

from __future__ import annotations

import email
from pathlib import Path

import pytest

from crm_automation.classify import classify
from crm_automation.models import Kind, ParsedMessage
from crm_automation.parse import parse

CORPUS = Path(__file__).resolve().parents[1] / "data" / "eml"
UNSUB_ADDRESSES = frozenset({"unsubscribe@example.com"})
KINDS = ("email_in", "auto_reply", "bounce", "unsubscribe")
FILES = sorted((kind, p) for kind in KINDS for p in (CORPUS / kind).glob("*.eml"))


def make(**kw) -> ParsedMessage:
    fields = {
        "message_id": "<t@example.org>", "from_addr": "alice@example.org", "from_name": "Alice",
        "to_addrs": ("sales@example.com",), "subject": "Re: Offer", "date": None, "in_reply_to": None,
        "references": (), "headers": {}, "text": "Fine.", "reply": "Fine.", "raw": b"",
    }
    fields.update(kw)
    return ParsedMessage(**fields)


def message(headers: str, body: str = "Fine, thanks.") -> ParsedMessage:
    raw = ("From: Alice <alice@example.org>\r\nTo: sales@example.com\r\nSubject: Re: Offer\r\n" + headers + "\r\n" + body)
    return parse(raw.encode())


@pytest.mark.parametrize(("kind", "path"), FILES, ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_corpus(kind, path):
    raw = path.read_bytes()
    result = classify(parse(raw), unsubscribe_addresses=UNSUB_ADDRESSES)
    assert result.kind == Kind(kind), result.evidence
    assert result.evidence
    if kind == "bounce":
        headers = email.message_from_bytes(raw)
        assert result.recipients == (headers["X-Test-Expected-Recipient"].lower(),)
        assert result.permanent is (headers["X-Test-Expected-Permanent"] == "true")
    else:
        assert result.recipients == ()


def test_corpus_covers_every_kind_and_is_big_enough():
    counts = {kind: len(list((CORPUS / kind).glob("*.eml"))) for kind in (*KINDS, "quarantine")}
    assert all(counts.values()), counts
    assert sum(counts.values()) >= 45


# -- auto-replies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "evidence"),
    [
        ("Auto-Submitted: auto-replied\r\n", "header Auto-Submitted: auto-replied"),
        ("Auto-Submitted: auto-generated (vacation)\r\n", "header Auto-Submitted: auto-generated"),
        ("Auto-Submitted: Auto-Notified\r\n", "header Auto-Submitted: auto-notified"),
        ("X-Autoreply: yes\r\n", "header X-Autoreply: yes"),
        ("X-Autorespond: Re: Offer\r\n", "header X-Autorespond: Re: Offer"),
        ("X-Auto-Response-Suppress: All\r\n", "header X-Auto-Response-Suppress: All"),
        ("X-Auto-Response-Suppress: DR, OOF, AutoReply\r\n", "header X-Auto-Response-Suppress: DR, OOF, AutoReply"),
        ("Precedence: auto_reply\r\n", "header Precedence: auto_reply"),
    ],
)
def test_auto_reply_headers(headers, evidence):
    result = classify(message(headers))
    assert result.kind is Kind.AUTO_REPLY
    assert result.evidence == evidence


@pytest.mark.parametrize(
    "headers",
    ["Auto-Submitted: no\r\n", "Auto-Submitted: No (a person)\r\n", "Precedence: bulk\r\n", "Precedence: junk\r\n",
     "Precedence: list\r\n", "X-Auto-Response-Suppress: RN, NRN\r\n", "X-Autoreply: no\r\n"],
)
def test_not_auto_reply_headers(headers):
    assert classify(message(headers)).kind is Kind.EMAIL_IN


@pytest.mark.parametrize(
    ("subject", "shown"),
    [
        ("Out of Office: Re: Offer", "Out of Office"),
        ("Automatic reply: Offer", "Automatic reply"),
        ("Auto: Offer", "Auto:"),
        ("AutoReply: Offer", "AutoReply"),
        ("自动回复：报价", "自动回复"),
        ("自动答复: 报价", "自动答复"),
        ("休假中：Re: 报价", "休假"),
        ("【自动回复】Re: 报价", "自动回复"),
        ("[自动回复] Re: 报价", "自动回复"),
    ],
)
def test_auto_reply_subjects(subject, shown):
    result = classify(make(subject=subject))
    assert result.kind is Kind.AUTO_REPLY
    assert result.evidence == f"subject starts with {shown}"


@pytest.mark.parametrize("subject", ["Re: 关于自动回复功能的咨询", "Re: Office move", "Automation quote", "Re: Auto parts"])
def test_subjects_that_only_mention_the_words(subject):
    assert classify(make(subject=subject)).kind is Kind.EMAIL_IN


def test_qq_holiday_body():
    text = "这是一封自动回复邮件。您好，我最近正在休假中，无法亲自回复您的邮件。"
    result = classify(make(text=text, reply=text))
    assert result.kind is Kind.AUTO_REPLY
    assert result.evidence == "body says 这是一封自动回复邮件"


def test_auto_reply_wins_over_unsubscribe_word():
    result = classify(make(subject="Automatic reply: Offer", reply="unsubscribe", text="unsubscribe"))
    assert result.kind is Kind.AUTO_REPLY


# -- unsubscribe -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    ["unsubscribe", "Unsubscribe.", "UNSUBSCRIBE!", "退订", "退订。", "TD", "td", "T", "取消订阅", "退订谢谢", "退订，谢谢！",
     "请退订", "please unsubscribe me", "Please unsubscribe me.", "Unsubscribe me please", "remove me", "STOP",
     "我要退订", "麻烦取消订阅，谢谢", "不要再发了", "  退 订  "],
)
def test_unsubscribe_words(reply):
    result = classify(make(reply=reply, text=reply))
    assert result.kind is Kind.UNSUBSCRIBE
    assert result.evidence.startswith("short reply")


@pytest.mark.parametrize(
    "reply",
    ["我想退订上周的订单", "你好，我想退订上周的订单，麻烦帮我处理一下退款。", "Please do not unsubscribe me, I like the offers",
     "TD Bank wire sent", "The", "unsubscribe " + "x" * 60, "请问怎么退订？我其实想保留订阅但少收一些", "Thanks"],
)
def test_not_unsubscribe(reply):
    assert classify(make(reply=reply, text=reply)).kind is Kind.EMAIL_IN


def test_empty_reply_uses_the_subject():
    assert classify(make(subject="Re: 退订", reply="", text="")).kind is Kind.UNSUBSCRIBE
    assert classify(make(subject="Re: Offer", reply="", text="")).kind is Kind.EMAIL_IN


def test_message_to_the_unsubscribe_address_case_insensitive():
    msg = make(to_addrs=("unsubscribe@example.com",), reply="A long message about many things " * 5)
    result = classify(msg, unsubscribe_addresses=frozenset({"Unsubscribe@Example.com"}))
    assert result.kind is Kind.UNSUBSCRIBE
    assert result.evidence == "sent to unsubscribe address unsubscribe@example.com"
    assert classify(msg).kind is Kind.EMAIL_IN


# -- bounces -------------------------------------------------------------------------------


def dsn(action: str, status: str, rcpt: str = "Bob@Example.net", extra_block: str = "") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.net\r\nTo: sales@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="R"\r\n\r\n'
        "--R\r\nContent-Type: text/plain\r\n\r\nThe mail system.\r\n"
        "--R\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        f"Final-Recipient: rfc822; {rcpt}\r\nAction: {action}\r\nStatus: {status}\r\n\r\n{extra_block}"
        "--R--\r\n"
    ).encode()


def test_dsn_permanent():
    result = classify(parse(dsn("failed", "5.1.1")))
    assert result.kind is Kind.BOUNCE
    assert result.recipients == ("bob@example.net",)
    assert result.permanent is True
    assert result.evidence == "DSN Status 5.1.1 for bob@example.net"


def test_dsn_temporary():
    result = classify(parse(dsn("delayed", "4.4.1")))
    assert result.kind is Kind.BOUNCE
    assert result.permanent is False
    assert result.evidence == "DSN Status 4.4.1 for bob@example.net"


def test_dsn_mixed_reports_the_permanent_recipients():
    raw = dsn("delayed", "4.4.1", extra_block="Final-Recipient: rfc822; carol@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n")
    result = classify(parse(raw))
    assert result.permanent is True
    assert result.recipients == ("carol@example.org",)


def test_dsn_success_report_is_not_a_bounce():
    result = classify(parse(dsn("delivered", "2.0.0")))
    assert result.kind is Kind.AUTO_REPLY
    assert "without failures" in result.evidence


def test_bounce_before_auto_submitted():
    assert classify(parse(dsn("failed", "5.1.1"))).kind is Kind.BOUNCE


def test_human_subject_mentioning_bounce_without_addresses_is_email_in():
    msg = message("", "Why did my mail bounce? Please check.")
    msg2 = make(subject="关于退信的问题", text="我的邮件为什么被退回了？", reply="我的邮件为什么被退回了？")
    assert classify(msg).kind is Kind.EMAIL_IN
    assert classify(msg2).kind is Kind.EMAIL_IN


def test_human_subject_with_address_in_signature_is_email_in():
    text = "货物已经退回，请查收。\n\n张三\n邮箱地址：zhangsan@example.cn"
    msg = make(subject="Re: 退回货物", text=text, reply=text)
    assert classify(msg).kind is Kind.EMAIL_IN


def test_x_failed_recipients_header():
    raw = (b"From: Mail Delivery System <Mailer-Daemon@mx.example.org>\r\nTo: sales@example.com\r\n"
           b"Subject: Mail delivery failed\r\nX-Failed-Recipients: Dave@Example.org\r\n\r\n"
           b"A message that you sent could not be delivered.\r\n  550 5.1.1 User unknown\r\n")
    result = classify(parse(raw))
    assert result.kind is Kind.BOUNCE
    assert result.recipients == ("dave@example.org",)
    assert result.permanent is True


def test_chinese_notice_temporary():
    text = "您的邮件暂时无法投递到 later@example.cn，系统将继续尝试投递。(451 try again later)"
    msg = make(from_addr="postmaster@163.example.cn", subject="系统退信", text=text, reply=text)
    result = classify(msg)
    assert result.kind is Kind.BOUNCE
    assert result.recipients == ("later@example.cn",)
    assert result.permanent is False


def test_bounce_sender_without_recipient_is_still_a_bounce():
    msg = make(from_addr="mailer-daemon@mx.example.net", subject="failure notice", text="Sorry.", reply="Sorry.")
    result = classify(msg)
    assert result.kind is Kind.BOUNCE
    assert result.recipients == ()
    assert "unknown recipient" in result.evidence


def test_bounce_own_addresses_are_not_recipients():
    text = "Your message to sales@example.com from mailer-daemon@mx.example.net failed: frank@example.org unknown (550)"
    msg = make(from_addr="mailer-daemon@mx.example.net", subject="Returned mail", text=text, reply=text)
    assert classify(msg).recipients == ("frank@example.org",)


def test_fuzzed_bounces_classify_without_errors_or_library_tracebacks(caplog):
    """Mangled bounces either parse and classify cleanly or are refused by parse."""
    import logging
    import random

    from crm_automation.errors import MessageError

    rng = random.Random(7)
    sources = [p.read_bytes() for p in sorted((CORPUS / "bounce").glob("*.eml"))]
    kinds = set()
    caplog.set_level(logging.WARNING)
    for _ in range(600):
        buf = bytearray(rng.choice(sources))
        for _ in range(rng.randrange(1, 30)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        try:
            msg = parse(bytes(buf))
        except MessageError:
            continue
        kinds.add(classify(msg).kind)
    assert Kind.BOUNCE in kinds
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
