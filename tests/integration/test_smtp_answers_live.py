"""Issue #17 item 7 at the transport: a real aiosmtpd answering per recipient.

Assertions are on what the server received (envelope, options, raw bytes,
how often each address was named at RCPT) and on what the transport raised.
"""

from __future__ import annotations

import time

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
