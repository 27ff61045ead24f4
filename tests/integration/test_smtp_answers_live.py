"""Issue #17 items 7 and 8 at the transport: a real aiosmtpd answering per recipient, offering or withholding SMTPUTF8.

Assertions are on what the server received (envelope, options, raw bytes,
how often each address was named at RCPT) and on what the transport raised.
"""

from __future__ import annotations

import time
from email import policy
from email.parser import Parser

import pytest

from crm_automation.errors import About, PermanentSendError, QuotaExceededError, TransientSendError
from crm_automation.transports.smtp import SmtpTransport
from tests.integration.test_smtp_transport import SENDER, make_message

pytestmark = pytest.mark.integration

BAD = "bad@example.net"
GOOD = "bob@example.net"


def transport(srv) -> SmtpTransport:
    return SmtpTransport(srv.host, srv.port, security="none", timeout=5.0)


@pytest.mark.parametrize(("reply", "error", "about"), [
    pytest.param("552 5.2.2 <bad@example.net>: Recipient address rejected: Mailbox full, quota exceeded",
                 PermanentSendError, About.MAILBOX_FULL, id="552-5.2.2"),
    pytest.param("452 4.2.2 The email account that you tried to reach is over quota", PermanentSendError,
                 About.MAILBOX_FULL, id="452-4.2.2"),
    pytest.param("450 4.2.1 Mailbox temporarily unavailable, try again later", TransientSendError,
                 About.RECIPIENT, id="450"),
    pytest.param("550 5.1.1 <bad@example.net>: Recipient address rejected: User unknown", PermanentSendError,
                 About.RECIPIENT_UNKNOWN, id="550-5.1.1"),
    pytest.param("550 5.7.1 <bad@example.net>: Recipient address rejected: Access denied", PermanentSendError,
                 About.RECIPIENT, id="550-5.7.1"),
])
def test_a_per_recipient_answer_says_it_is_about_that_recipient(smtpd, reply, error, about):
    smtpd.handler.reject[BAD] = reply
    bad, bad_mid = make_message(1, to=BAD)
    good, good_mid = make_message(2)
    with transport(smtpd) as t:
        with pytest.raises(error) as ei:
            t.send(bad, sender=SENDER, recipients=[BAD], message_id=bad_mid)
        t.send(good, sender=SENDER, recipients=[GOOD], message_id=good_mid)
    assert not isinstance(ei.value, QuotaExceededError)
    assert ei.value.about is about
    assert reply.split(" ", 1)[1] in str(ei.value)  # the server's own words
    if isinstance(ei.value, PermanentSendError):
        assert ei.value.recipient == BAD
    assert smtpd.handler.message_ids == [good_mid]
    assert smtpd.connections == 1  # the connection stayed usable


def test_421_at_rcpt_is_that_recipients_try_later_and_the_next_message_reconnects(smtpd):
    smtpd.handler.reject[BAD] = "421 4.7.0 Try again later, closing connection"
    bad, bad_mid = make_message(3, to=BAD)
    good, good_mid = make_message(4)
    with transport(smtpd) as t:
        with pytest.raises(TransientSendError) as ei:
            t.send(bad, sender=SENDER, recipients=[BAD], message_id=bad_mid)
        time.sleep(0.05)
        t.send(good, sender=SENDER, recipients=[GOOD], message_id=good_mid)
    assert ei.value.about is About.RECIPIENT
    assert ei.value.code == 421
    assert smtpd.handler.rcpt_seen[BAD] == 1  # not retried on a new connection within the same send
    assert smtpd.handler.message_ids == [good_mid]
    assert smtpd.connections == 2


def test_a_sending_quota_at_data_is_still_a_quota(smtpd):
    smtpd.handler.data_reply = "550 5.4.5 Daily user sending quota exceeded."
    raw, mid = make_message(5)
    with transport(smtpd) as t, pytest.raises(QuotaExceededError):
        t.send(raw, sender=SENDER, recipients=[GOOD], message_id=mid)


# -- internationalized addresses (RFC 6530-6532) ---------------------------------------------------------


def _utf8_message(n: int, to: str) -> tuple[bytes, str]:
    """A message whose To header carries the address as UTF-8 (RFC 6532), as our build_message writes it."""
    mid = f"<idn-{n}-{time.monotonic_ns()}@example.com>"
    raw = (f"From: sales@example.com\r\nTo: {to}\r\nSubject: =?utf-8?b?5L2g5aW9?=\r\nMessage-ID: {mid}\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"
           "\r\n5L2g5aW9\r\n").encode()
    return raw, mid


def test_a_non_ascii_local_part_goes_with_smtputf8_when_the_server_offers_it(smtp_server):
    srv = smtp_server(enable_SMTPUTF8=True)
    raw, mid = _utf8_message(1, "张三@example.cn")
    with transport(srv) as t:
        t.send(raw, sender=SENDER, recipients=["张三@example.cn"], message_id=mid)
    [got] = srv.messages
    assert got.rcpt_tos == ["张三@example.cn"]
    assert "SMTPUTF8" in [o.upper() for o in got.mail_options]
    assert got.raw == raw
    # RFC 6532: the header is UTF-8 (the stdlib's bytes parser would read it as surrogate escapes)
    msg = Parser(policy=policy.default).parsestr(got.raw.decode("utf-8"))
    assert msg["To"].addresses[0].addr_spec == "张三@example.cn"


def test_without_smtputf8_that_message_alone_fails_with_a_clear_reason(smtp_server):
    smtpd = smtp_server(enable_SMTPUTF8=False)
    raw, mid = _utf8_message(2, "张三@example.cn")
    good, good_mid = make_message(6)
    with transport(smtpd) as t:
        with pytest.raises(PermanentSendError) as ei:
            t.send(raw, sender=SENDER, recipients=["张三@example.cn"], message_id=mid)
        t.send(good, sender=SENDER, recipients=[GOOD], message_id=good_mid)
    assert ei.value.about is About.RECIPIENT
    assert ei.value.recipient == "张三@example.cn"
    assert "SMTPUTF8" in str(ei.value) and "张三@example.cn" in str(ei.value)
    assert smtpd.handler.rcpt_seen == {GOOD: 1}  # nothing of the refused message reached the server
    assert smtpd.handler.message_ids == [good_mid]


def test_a_utf8_header_without_a_utf8_envelope_also_needs_smtputf8(smtp_server):
    """An owner's note whose Reply-To is the customer's 张三@... : UTF-8 in a header (RFC 6532)."""
    smtpd = smtp_server(enable_SMTPUTF8=False)
    raw, mid = _utf8_message(3, "owner@example.com")
    raw = raw.replace(b"To: owner@example.com", "To: owner@example.com\r\nReply-To: 张三@example.cn".encode())
    with transport(smtpd) as t, pytest.raises(PermanentSendError, match="SMTPUTF8") as ei:
        t.send(raw, sender=SENDER, recipients=["owner@example.com"], message_id=mid)
    assert ei.value.about is About.RECIPIENT
    assert smtpd.messages == []


def test_an_idn_domain_goes_as_a_labels_to_any_server(smtp_server):
    smtpd = smtp_server(enable_SMTPUTF8=False)
    raw, mid = make_message(7, to="alice@xn--fsqu00a.xn--fiqs8s")
    with transport(smtpd) as t:
        t.send(raw, sender="销售 <sales@例子.中国>", recipients=["alice@例子.中国"], message_id=mid)
    [got] = smtpd.messages
    assert got.rcpt_tos == ["alice@xn--fsqu00a.xn--fiqs8s"]
    assert got.mail_from == "sales@xn--fsqu00a.xn--fiqs8s"
    assert "SMTPUTF8" not in [o.upper() for o in got.mail_options]


def test_an_invalid_idn_domain_fails_that_message_alone(smtpd):
    raw, mid = make_message(8)
    with transport(smtpd) as t, pytest.raises(PermanentSendError, match="internationalized domain") as ei:
        t.send(raw, sender=SENDER, recipients=["alice@例子..中国"], message_id=mid)
    assert ei.value.about is About.RECIPIENT
    assert smtpd.messages == []
