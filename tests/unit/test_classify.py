"""classify(): the corpus (folder = expected kind) and one literal per rule."""

from __future__ import annotations

import email
import functools
import json
from pathlib import Path

import pytest

from crm_automation.classify import classify
from crm_automation.models import BounceFailure, Kind, ParsedMessage, Permanence
from crm_automation.parse import parse
from tests.fixtures.postfix import original_message_id as returned_message_id

CORPUS = Path(__file__).resolve().parents[1] / "data" / "eml"
UNSUB_ADDRESSES = frozenset({"unsubscribe@example.com"})
KINDS = ("email_in", "auto_reply", "bounce", "unsubscribe")
FILES = sorted((kind, p) for kind in KINDS for p in (CORPUS / kind).glob("*.eml"))
BOUNCES = CORPUS / "bounce"
# The real-Postfix corpus (issue #11) is real bytes: its expectations live beside it, not in headers.
POSTFIX_EXPECTED: dict[str, dict[str, dict[str, str]]] = json.loads(
    (BOUNCES / "postfix_expected.json").read_text(encoding="utf-8"))
# Contacts in our sheet that non-bounce messages of the corpus name: a customer's colleague, a
# deputy named by an auto-reply, a recipient of a successful-delivery report.
OTHER_CUSTOMERS = frozenset({"warehouse@shop.example.cn", "tom.deputy@example.org", "wendy@example.org"})


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


def expected(path: Path) -> tuple[dict[str, Permanence], str | None]:
    """What a bounce file expects: each failed recipient's permanence, and the bounced Message-ID.

    Generated files declare it (``X-Test-Expected-Failures: a@x=hard, b@y=soft`` and, when the
    report returns the message, ``X-Test-Expected-Original``; tests/data/eml/make_corpus.py). The
    real-Postfix files take it from postfix_expected.json and from their returned part, read with
    the stdlib.
    """
    raw = path.read_bytes()
    if path.name in POSTFIX_EXPECTED:
        recipients = POSTFIX_EXPECTED[path.name]["recipients"]
        return {a: Permanence(p) for a, p in recipients.items()}, returned_message_id(email.message_from_bytes(raw))
    headers = email.message_from_bytes(raw)
    failures: dict[str, Permanence] = {}
    for item in str(headers["X-Test-Expected-Failures"] or "").split(","):
        address, _, permanence = item.strip().partition("=")
        failures[address] = Permanence(permanence)
    return failures, headers["X-Test-Expected-Original"]


@functools.cache
def customers() -> frozenset[str]:
    """Our sheet for the corpus: every recipient a bounce names, and the contacts in OTHER_CUSTOMERS."""
    named = {a for p in BOUNCES.glob("*.eml") for a in expected(p)[0]}
    return frozenset(named | OTHER_CUSTOMERS)


@pytest.mark.parametrize(("kind", "path"), FILES, ids=lambda v: v.stem if isinstance(v, Path) else v)
def test_corpus(kind, path):
    raw = path.read_bytes()
    result = classify(parse(raw), unsubscribe_addresses=UNSUB_ADDRESSES, is_ours=customers().__contains__)
    assert result.kind == Kind(kind), result.evidence
    assert result.evidence
    if kind == "bounce":
        failures, original = expected(path)
        assert {f.address: f.permanence for f in result.failures} == failures, result.evidence
        assert len(result.failures) == len(failures), f"a recipient named twice: {result.failures}"
        if original is not None:
            assert result.original_message_id == original, result.evidence
    else:
        assert result.failures == ()


def test_bounce_corpus_declares_its_expectations():
    """Generated bounces declare what they expect; the real-Postfix files stay byte for byte as Postfix wrote them."""
    names = {p.name for p in BOUNCES.glob("*.eml")}
    assert set(POSTFIX_EXPECTED) <= names
    for path in sorted(BOUNCES.glob("*.eml")):
        fields = [k for k in email.message_from_bytes(path.read_bytes()) if k.lower().startswith("x-test-")]
        if path.name in POSTFIX_EXPECTED:
            assert fields == [], path.name
            continue
        assert set(fields) <= {"X-Test-Expected-Failures", "X-Test-Expected-Original"}, (path.name, fields)
        failures, original = expected(path)
        assert failures, path.name
        assert all(a == a.lower() and "@" in a for a in failures), (path.name, failures)
        assert original is None or (original.startswith("<") and original.endswith(">")), (path.name, original)
    for kind in KINDS:
        if kind != "bounce":
            for path in (CORPUS / kind).glob("*.eml"):
                assert "X-Test-Expected-Failures" not in email.message_from_bytes(path.read_bytes()), path


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
    assert result.failures == (BounceFailure("bob@example.net", Permanence.HARD, "5.1.1"),)
    assert result.evidence == "DSN bob@example.net 5.1.1 hard"


def test_dsn_temporary():
    result = classify(parse(dsn("delayed", "4.4.1")))
    assert result.kind is Kind.BOUNCE
    assert result.permanent is False
    assert result.failures == (BounceFailure("bob@example.net", Permanence.DELAYED, "4.4.1"),)
    assert result.evidence == "DSN bob@example.net 4.4.1 delayed"


@pytest.mark.parametrize("status", ["4.4.7", "4.4.1", "4.2.2"])
def test_dsn_action_failed_with_a_4xx_status_is_a_lost_message_soft(status):
    # Issue #11: the server gave up (e.g. delivery time expired); the message will never arrive.
    result = classify(parse(dsn("failed", status)))
    assert result.failures == (BounceFailure("bob@example.net", Permanence.SOFT, status),)
    assert result.permanent is False
    assert result.failures[0].permanence.lost


def test_dsn_action_failed_without_status_is_hard():
    raw = dsn("failed", "").replace(b"Status: \r\n", b"")
    assert classify(parse(raw)).failures == (BounceFailure("bob@example.net", Permanence.HARD, "failed"),)


def test_dsn_mixed_reports_every_recipient_with_its_own_permanence():
    raw = dsn("delayed", "4.4.1", extra_block="Final-Recipient: rfc822; carol@example.org\r\nAction: failed\r\nStatus: 5.2.2\r\n\r\n"
              "Final-Recipient: rfc822; dave@example.org\r\nAction: failed\r\nStatus: 4.4.7\r\n\r\n")
    result = classify(parse(raw))
    assert result.permanent is True
    assert result.failures == (BounceFailure("bob@example.net", Permanence.DELAYED, "4.4.1"),
                               BounceFailure("carol@example.org", Permanence.HARD, "5.2.2"),
                               BounceFailure("dave@example.org", Permanence.SOFT, "4.4.7"))


def test_dsn_names_the_original_message_id():
    raw = dsn("failed", "5.1.1").replace(
        b"--R--", b"--R\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: sales@example.com\r\n"
        b"Message-ID: <crm.abc123@example.com>\r\nSubject: Hello\r\n\r\n--R--")
    assert classify(parse(raw)).original_message_id == "<crm.abc123@example.com>"


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


# -- issue #11: every failed recipient, its own permanence, the bounced message ----------------


def test_dsn_names_only_recipients_that_failed_or_wait():
    # RFC 3464 §2.3.3: delivered, relayed and expanded recipients did not bounce.
    raw = dsn("delivered", "2.0.0", extra_block=(
        "Final-Recipient: rfc822; carol@example.org\r\nAction: relayed\r\nStatus: 2.0.0\r\n\r\n"
        "Final-Recipient: rfc822; dave@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        "Final-Recipient: rfc822; erin@example.org\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n"))
    result = classify(parse(raw))
    assert result.kind is Kind.BOUNCE
    assert {f.address: f.permanence for f in result.failures} == {
        "dave@example.org": Permanence.HARD, "erin@example.org": Permanence.DELAYED}


def test_dsn_enhanced_status_decides_not_the_reply_code():
    # Exchange writes "550 4.4.7 QUEUE.Expired": the 4.4.7 (RFC 3463) says the message expired, so soft.
    raw = dsn("failed", "4.4.7\r\nDiagnostic-Code: smtp;550 4.4.7 QUEUE.Expired; message expired")
    assert classify(parse(raw)).failures == (BounceFailure("bob@example.net", Permanence.SOFT, "4.4.7"),)


def test_original_message_id_from_a_returned_message():
    raw = dsn("failed", "5.1.1").replace(
        b"--R--", b"--R\r\nContent-Type: message/rfc822\r\n\r\nFrom: sales@example.com\r\nTo: bob@example.net\r\n"
        b"Message-ID: <crm.def456@example.com>\r\nSubject: Hello\r\n\r\nHello!\r\n--R--")
    assert classify(parse(raw)).original_message_id == "<crm.def456@example.com>"


def test_bounce_without_returned_message_has_no_original():
    assert classify(parse(dsn("failed", "5.1.1"))).original_message_id is None


def test_not_a_bounce_has_no_failures_and_no_original():
    result = classify(message("In-Reply-To: <c1.s1.k42@example.com>\r\n", "Thanks, see the attached order."))
    assert result.kind is Kind.EMAIL_IN
    assert (result.failures, result.recipients, result.permanent, result.original_message_id) == ((), (), False, None)


def test_x_failed_recipients_names_every_address():
    raw = (b"From: Mail Delivery System <Mailer-Daemon@mx.example.org>\r\nTo: sales@example.com\r\n"
           b"Subject: Mail delivery failed: returning message to sender\r\n"
           b"X-Failed-Recipients: Dave@Example.org, erin@example.net\r\n\r\n"
           b"A message that you sent could not be delivered to one or more of its\r\nrecipients. "
           b"This is a permanent error. The following address(es) failed:\r\n\r\n"
           b"  dave@example.org\r\n    550 5.1.1 User unknown\r\n"
           b"  erin@example.net\r\n    550 5.2.1 Mailbox disabled\r\n")
    result = classify(parse(raw))
    assert {f.address: f.permanence for f in result.failures} == {
        "dave@example.org": Permanence.HARD, "erin@example.net": Permanence.HARD}


def test_text_notice_gives_each_recipient_its_own_permanence():
    # Exim lists each failed address with its own reason. No status after a retry timeout: lost,
    # hard. A 4.x.x status with "expired": the server gave up, so the message is lost, soft.
    raw = (b"From: Mail Delivery System <Mailer-Daemon@mx.example.org>\r\nTo: sales@example.com\r\n"
           b"Subject: Mail delivery failed: returning message to sender\r\n"
           b"X-Failed-Recipients: dave@example.org, erin@example.net, frank@example.com.cn\r\n\r\n"
           b"A message that you sent could not be delivered to one or more of its\r\nrecipients. "
           b"This is a permanent error. The following address(es) failed:\r\n\r\n"
           b"  dave@example.org\r\n    SMTP error from remote mail server after RCPT TO:<dave@example.org>:\r\n"
           b"    550 5.1.1 User unknown\r\n"
           b"  erin@example.net\r\n    retry timeout exceeded\r\n"
           b"  frank@example.com.cn\r\n    451 4.4.7 Message expired: delivery time exceeded, giving up\r\n")
    result = classify(parse(raw))
    assert {f.address: f.permanence for f in result.failures} == {
        "dave@example.org": Permanence.HARD, "erin@example.net": Permanence.HARD,
        "frank@example.com.cn": Permanence.SOFT}


def test_rejection_carrying_auto_submitted_is_a_bounce():
    # Rule 5 of issue #11: Auto-Submitted alone does not make a delivery failure an auto-reply.
    raw = (b"From: Postmaster <postmaster-noreply@mx.partner.example.net>\r\nTo: sales@example.com\r\n"
           b"Subject: Automatically rejected mail\r\nAuto-Submitted: auto-replied\r\n\r\n"
           b"Your message to uma.k@partner.example.net has been rejected:\r\n\r\n"
           b"    550 5.7.1 <uma.k@partner.example.net>: Recipient address rejected: Access denied\r\n")
    result = classify(parse(raw), is_ours={"uma.k@partner.example.net"}.__contains__)
    assert result.kind is Kind.BOUNCE, result.evidence
    assert result.failures == (BounceFailure("uma.k@partner.example.net", Permanence.HARD, "5.7.1"),)


def test_person_naming_a_customer_next_to_a_failure_word_is_not_a_bounce():
    # A reply from a person: "退回" in the subject and the text, and a colleague who is in our
    # sheet too. Marking the colleague bounced would suppress a good address.
    text = "您好，样品包裹被快递退回了。请把新地址发到 warehouse@shop.example.cn，我们重新寄出。"
    msg = make(from_addr="he.xiaojie@shop.example.cn", from_name="何小姐", subject="Re: 样品包裹退回",
               in_reply_to="<c1.s1.k42@example.com>", text=text, reply=text)
    result = classify(msg, is_ours={"warehouse@shop.example.cn", "he.xiaojie@shop.example.cn"}.__contains__)
    assert result.kind is Kind.EMAIL_IN, result.evidence
    assert result.failures == ()


def test_the_length_shortcut_never_changes_what_is_an_unsubscribe_request():
    """Issue #13: a text is rejected early only when its normalised word is surely too long."""
    import random

    from crm_automation import classify as c

    rng = random.Random(11)
    pieces = ["退订", "TD", "td", "unsubscribe", "取消订阅", " ", "　", "，", "。", "!", "e\u0301", "\u0301",
              "ＴＤ", "ｕｎｓｕｂ", "ﬁ", "㈱", "Ⅳ", "\u1100\u1161\u11a8", "가", "x", "中", "1", "\n", "—", "🙂",
              "İ", "ß", "Å", "A\u030a", "\u00a0", "\u200b", "\ufeff", "-", "_"]
    for _ in range(4000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 60)))
        word = c._normalise(text)
        slow = bool(word) and len(word) <= c._MAX_UNSUBSCRIBE_CHARS and (
            word in c._UNSUBSCRIBE_WORDS or bool(c._UNSUBSCRIBE_EN.match(word) or c._UNSUBSCRIBE_ZH.match(word)))
        assert c._is_unsubscribe_text(text) == slow, repr(text)
        if len(text) > c._MAX_UNSUBSCRIBE_CHARS and len(c._NOT_SURE_KEPT.sub("", text)) > c._MAX_UNSUBSCRIBE_CHARS:
            assert len(word) > c._MAX_UNSUBSCRIBE_CHARS, repr(text)  # the shortcut's premise
