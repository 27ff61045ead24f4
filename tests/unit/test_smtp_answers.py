"""The SMTP transport's reading of a server's answer, on literal replies (imapclient's habit: pure parsers)."""

from __future__ import annotations

import pytest

from crm_automation.transports.smtp import enhanced_status, quota_answer, recipient_unknown


@pytest.mark.parametrize(("resp", "code"), [
    (b"5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table", "5.1.1"),
    (b"4.7.0 Try again later", "4.7.0"),
    (b"Requested action not taken: mailbox unavailable", None),
    (b"see RFC 5.1.1.3 for details", None),  # not at the start of the text
])
def test_enhanced_status_is_read_from_the_start_of_the_reply(resp, code):
    assert enhanced_status(resp) == code


@pytest.mark.parametrize(("enhanced", "resp", "quota"), [
    ("5.4.5", b"5.4.5 Daily user sending quota exceeded.", True),  # Gmail
    ("5.2.0", b"5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", True),  # Microsoft 365
    (None, "发送频率过高，请稍后再试".encode(), True),  # QQ / 163
    (None, b"Reject by behaviour spam at Rcpt State(too frequently sending)", True),  # Alibaba Mail
    ("5.7.1", b"5.7.1 Message rejected as spam", False),
    ("5.1.1", b"5.1.1 User unknown", False),
    (None, "您的邮件内容违反相关限制".encode(), False),  # the bare word 限制 alone is no quota (issue #10)
])
def test_quota_answers_by_status_and_the_providers_known_words(enhanced, resp, quota):
    assert quota_answer(enhanced, resp) is quota


@pytest.mark.parametrize(("code", "enhanced", "resp", "unknown"), [
    (550, "5.1.1", b"5.1.1 <x@y>: User unknown", True),
    (550, "5.1.10", b"5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", True),
    (553, "5.1.2", b"5.1.2 bad destination system address", True),
    (550, "5.7.1", b"5.7.1 Relaying denied", False),  # a policy refusal says nothing about the mailbox
    (550, None, b"Requested action not taken: mailbox unavailable", True),
    (550, None, "用户不存在".encode(), True),
    (554, None, b"Transaction failed", False),
    (550, None, b"Message rejected as spam", False),
])
def test_an_unknown_recipient_is_5_1_x_or_550_with_user_unknown_words(code, enhanced, resp, unknown):
    assert recipient_unknown(code, enhanced, resp) is unknown
