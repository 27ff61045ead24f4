"""Internationalized mail coming in (issue #17 item 8, RFC 6530-6533): global bounces and UTF-8 replies.

The bounce is the real one Postfix wrote for a message sent with SMTPUTF8 to
an unknown ``张三@customer.example.com`` (tests/data/eml/bounce/
postfix_smtputf8_global_dsn.eml: ``message/global-delivery-status`` and the
message returned as ``message/global``); the rest are built here. A CSV
workspace with a Maildir inbox, as the worker reads it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from crm_automation.classify import classify
from crm_automation.models import Kind, Permanence
from crm_automation.parse import parse
from crm_automation.reading import Reading, ReadPolicy, read
from tests.fixtures.core import db_rows, make_workspace

BOUNCE = Path(__file__).resolve().parents[1] / "data" / "eml" / "bounce"
GLOBAL_DSN = BOUNCE / "postfix_smtputf8_global_dsn.eml"
ZHANG = "张三@customer.example.com"
ROWS = [{"Email": ZHANG, "Name": "张三", "Stage": "lead", "Owner": "owner@example.com"},
        {"Email": "李四@例子.中国", "Name": "李四", "Stage": "lead", "Owner": "owner@example.com"},
        {"Email": "c0@example.com", "Name": "Customer 0", "Stage": "lead", "Owner": "owner@example.com"}]
_n = 0


def drop(ws: Path, raw: bytes) -> None:
    global _n
    _n += 1
    (ws / "inbox" / "new" / f"{_n}.global").write_bytes(raw)


def fetched(tmp_path: Path, cli, *messages: bytes) -> Path:
    ws = tmp_path / "ws"
    cfg = make_workspace(ws, rows=ROWS)
    assert cli("sync", "--config", str(cfg)).code == 0
    for raw in messages:
        drop(ws, raw)
    r = cli("fetch", "--config", str(cfg), "--now", "2026-11-28T10:00")
    assert r.code == 0, r.out + r.err
    assert "Traceback" not in r.err
    return ws / "var" / "crm.sqlite"


def test_the_real_postfix_global_dsn_bounces_the_customer_with_a_chinese_local_part(tmp_path, cli):
    db = fetched(tmp_path, cli, GLOBAL_DSN.read_bytes())
    rows = db_rows(db, "SELECT customer_key, json_extract(details, '$.recipient'), "
                       "json_extract(details, '$.permanence'), json_extract(details, '$.status') "
                       "FROM activities WHERE kind = 'bounce'")
    assert rows == [(ZHANG, ZHANG, "hard", "5.1.1")]
    assert dict(db_rows(db, "SELECT email, reason FROM suppressions")) == {ZHANG: "bounced"}
    assert dict(db_rows(db, "SELECT key, email_status FROM customers"))[ZHANG] == "bounced"
    assert db_rows(db, "SELECT COUNT(*) FROM quarantine") == [(0,)]


def test_the_global_dsn_names_the_returned_message():
    msg = parse(GLOBAL_DSN.read_bytes())
    result = classify(msg)
    assert result.kind is Kind.BOUNCE
    assert [(f.address, f.permanence, f.status) for f in result.failures] == [(ZHANG, Permanence.HARD, "5.1.1")]
    assert result.original_message_id is not None and result.original_message_id.startswith("<crm-test-")
    assert result.evidence == f"DSN {ZHANG} 5.1.1 hard"


def global_report(*, encoding: str, returned: str, recipient: str = "utf-8; \\x{5F20}\\x{4E09}@customer.example.com",
                  action: str = "failed", status: str = "5.1.1") -> bytes:
    """A global DSN as other servers may write it: its parts base64 or QP encoded, headers only returned."""
    fields = (f"Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: {recipient}\r\n"
              f"Action: {action}\r\nStatus: {status}\r\n").encode()
    headers = ("From: Sales <sales@example.com>\r\nTo: 张三 <张三@customer.example.com>\r\nSubject: 报价\r\n"
               "Message-ID: <crm.0000000000000000000000000000beef@example.com>\r\n").encode()
    if encoding == "base64":
        fields_body, headers_body = base64.encodebytes(fields), base64.encodebytes(headers)
    else:
        fields_body, headers_body = fields, headers
    return (b"From: Mail Delivery Subsystem <mailer-daemon@mx.example.org>\r\nTo: sales@example.com\r\n"
            b"Subject: Delivery Status Notification (Failure)\r\nMessage-ID: <dsn-g1@mx.example.org>\r\n"
            b"Date: Sat, 28 Nov 2026 09:00:00 +0800\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
            b"--B\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nDelivery failed.\r\n"
            b"--B\r\nContent-Type: message/global-delivery-status\r\n"
            + f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode() + fields_body
            + b"\r\n--B\r\nContent-Type: " + returned.encode() + b"\r\n"
            + f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode() + headers_body + b"\r\n--B--\r\n")


@pytest.mark.parametrize("encoding", ["8bit", "base64"])
def test_global_headers_returned_and_escaped_utf8_recipients_are_read(encoding):
    result = classify(parse(global_report(encoding=encoding, returned="message/global-headers")))
    assert result.kind is Kind.BOUNCE, result.evidence
    assert [(f.address, f.permanence) for f in result.failures] == [(ZHANG, Permanence.HARD)]
    assert result.original_message_id == "<crm.0000000000000000000000000000beef@example.com>"


def test_a_global_delay_is_a_delay_and_a_global_success_report_no_bounce():
    delayed = classify(parse(global_report(encoding="8bit", returned="message/global-headers", action="delayed",
                                           status="4.4.1")))
    assert [(f.address, f.permanence) for f in delayed.failures] == [(ZHANG, Permanence.DELAYED)]
    delivered = classify(parse(global_report(encoding="8bit", returned="message/global-headers",
                                             action="delivered", status="2.0.0")))
    assert delivered.kind is Kind.AUTO_REPLY
    assert delivered.failures == ()


@pytest.mark.parametrize("damage", [
    lambda raw: raw.replace(b"Final-Recipient", b"Final-Recipient\xff\xfe", 1),           # bytes that are no UTF-8
    lambda raw: raw.replace(b"Content-Transfer-Encoding: base64", b"Content-Transfer-Encoding: base64\r\n\r\n!!", 1),
    lambda raw: raw[: len(raw) // 2],                                                     # cut off in the middle
    lambda raw: raw.replace(b"\\x{5F20}", b"\\x{DFFFFF}", 1),                              # no such code point
    lambda raw: raw.replace(b'boundary="B"', b'boundary="C"', 1),                          # parts never found
])
def test_a_damaged_global_report_never_raises(damage):
    for encoding in ("8bit", "base64"):
        body = damage(global_report(encoding=encoding, returned="message/global-headers"))
        out = read(body, None, ReadPolicy(1 << 20, frozenset(), frozenset({ZHANG})))
        # Read (a bounce, or what is left of one), or refused with its reason; never an internal error.
        assert isinstance(out, Reading) or not out.error.startswith("internal error"), out.error


def test_an_unreadable_global_bounce_is_quarantined_whole(tmp_path, cli):
    # No sender, no text: only a report part of UTF-8 garbage. Nothing to understand, so kept whole.
    raw = (b"To: sales@example.com\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
           b"--B\r\nContent-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           b"Final-Recipient: utf-8; \xe5\xbc\xa0\xff\xfe@\r\n\r\n--B--\r\n")
    db = fetched(tmp_path, cli, raw)
    assert db_rows(db, "SELECT raw FROM quarantine") == [(raw,)]


def utf8_reply(frm: str, n: int) -> bytes:
    """A reply sent with SMTPUTF8: raw UTF-8 in its headers (RFC 6532), as message/global content is."""
    return (f"From: 李四 <{frm}>\r\nTo: 销售部 <sales@example.com>\r\nSubject: 回复：报价\r\n"
            f"Message-ID: <reply-{n}@例子.中国>\r\nDate: Sat, 28 Nov 2026 09:00:00 +0800\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "价格可以，请发合同。\r\n").encode()


def test_utf8_replies_match_the_customer_in_either_spelling_of_the_domain(tmp_path, cli):
    # The sheet has the U-label; one reply comes with it, one with the A-label (a client without SMTPUTF8).
    db = fetched(tmp_path, cli, utf8_reply("李四@例子.中国", 1), utf8_reply("李四@xn--fsqu00a.xn--fiqs8s", 2))
    rows = db_rows(db, "SELECT customer_key, body, json_extract(details, '$.from'), json_extract(details, "
                       "'$.matched_by') FROM activities WHERE kind = 'email_in' ORDER BY id")
    assert rows == [("李四@例子.中国", "价格可以，请发合同。", "李四@例子.中国", "sender address"),
                    ("李四@例子.中国", "价格可以，请发合同。", "李四@xn--fsqu00a.xn--fiqs8s", "sender address")]
    timeline = json.loads(cli("timeline", "李四@例子.中国", "--config", str(tmp_path / "ws" / "config.toml"),
                              "--json").out)
    assert [a["kind"] for a in timeline["activities"]].count("email_in") == 2


def test_a_forwarded_message_global_is_not_the_sender_s_words():
    """A reply that forwards an internationalized message (message/global) is read by its own text (RFC 6532 §3.7)."""
    raw = ("From: 李四 <李四@例子.中国>\r\nTo: sales@example.com\r\nSubject: Fwd: 报价\r\nMessage-ID: <fwd-1@例子.中国>\r\n"
           'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="M"\r\n\r\n'
           "--M\r\nContent-Type: message/global\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           "From: 王五 <王五@例子.中国>\r\nSubject: 报价\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "这是王五原来的邮件。\r\n"
           "--M\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           "请看王五的邮件，我们同意这个价格。\r\n--M--\r\n").encode()
    msg = parse(raw)
    assert msg.from_addr == "李四@例子.中国"
    assert msg.text.strip() == "请看王五的邮件，我们同意这个价格。"
