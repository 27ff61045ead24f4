"""The SMTP transport's reading of a server's answer, on literal replies (imapclient's habit: pure parsers).

Issue #17 item 7: an answer is read by its enhanced code (RFC 3463) and the
stage it came at before its words. Each row is (basic code, reply text,
stage) -> (what the send pass does, what the answer is about).
"""

from __future__ import annotations

import pytest

from crm_automation.errors import About
from crm_automation.transports.smtp import Action, Stage, enhanced_status, read_answer

MAIL, RCPT, DATA, CONTENT = Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.CONTENT
RETRY, FAIL, QUOTA, RECONNECT = Action.RETRY, Action.FAIL, Action.QUOTA, Action.RECONNECT
UNKNOWN, FULL, RECIPIENT, SENDER = About.RECIPIENT_UNKNOWN, About.MAILBOX_FULL, About.RECIPIENT, About.SENDER


@pytest.mark.parametrize(("resp", "code"), [
    (b"5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table", "5.1.1"),
    (b"4.7.0 Try again later", "4.7.0"),
    (b"Requested action not taken: mailbox unavailable", None),
    (b"see RFC 5.1.1.3 for details", None),  # not at the start of the text
])
def test_enhanced_status_is_read_from_the_start_of_the_reply(resp, code):
    assert enhanced_status(resp) == code


ANSWERS = [
    # -- a full mailbox is that recipient's, never our sending quota (the words say "quota" too)
    pytest.param(552, b"5.2.2 <c0@example.net>: Recipient address rejected: Mailbox full, quota exceeded", RCPT,
                 FAIL, FULL, id="552-5.2.2-rcpt"),
    pytest.param(550, b"5.2.2 The email account that you tried to reach is over quota", RCPT, FAIL, FULL,
                 id="5.2.2-any-basic-code"),
    pytest.param(452, b"4.2.2 The email account that you tried to reach is over quota", RCPT, FAIL, FULL,
                 id="452-4.2.2-over-quota"),
    pytest.param(552, b"5.2.2 mailbox full", CONTENT, FAIL, FULL, id="5.2.2-after-data"),
    pytest.param(552, b"Requested mail action aborted: exceeded storage allocation", RCPT, FAIL, FULL,
                 id="bare-552-rcpt"),
    pytest.param(550, "用户邮箱已满".encode(), RCPT, FAIL, FULL, id="zh-mailbox-full"),
    pytest.param(550, b"Mailbox quota exceeded", RCPT, FAIL, FULL, id="words-mailbox-quota"),
    # -- real sending quotas stay quotas
    pytest.param(550, b"5.4.5 Daily user sending quota exceeded.", MAIL, QUOTA, SENDER, id="gmail-5.4.5-mail"),
    pytest.param(550, b"5.4.5 Daily user sending quota exceeded.", CONTENT, QUOTA, SENDER, id="gmail-5.4.5-data"),
    pytest.param(550, b"5.4.5 Daily user sending quota exceeded.", RCPT, QUOTA, SENDER, id="gmail-5.4.5-rcpt"),
    pytest.param(554, b"5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", CONTENT,
                 QUOTA, SENDER, id="microsoft-5.2.0"),
    pytest.param(554, b"5.2.2 STOREDRV.Submission.Exception:SubmissionQuotaExceededException", CONTENT,
                 QUOTA, SENDER, id="microsoft-5.2.2-submission"),
    pytest.param(550, "发送频率过高，请稍后再试".encode(), MAIL, QUOTA, SENDER, id="qq-163-mail"),
    pytest.param(554, "发送频率过高，请稍后再试".encode(), CONTENT, QUOTA, SENDER, id="qq-163-data"),
    pytest.param(554, b"Reject by behaviour spam at Rcpt State(too frequently sending)", RCPT, QUOTA, SENDER,
                 id="alibaba-rcpt"),
    pytest.param(550, b"Quota exceeded", MAIL, QUOTA, SENDER, id="quota-at-mail"),
    # -- unknown recipients (issue #11) and other refusals of one recipient: not counted by the breaker
    pytest.param(550, b"5.1.1 <x@y>: User unknown", RCPT, FAIL, UNKNOWN, id="5.1.1"),
    pytest.param(550, b"5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", RCPT,
                 FAIL, UNKNOWN, id="5.1.10"),
    pytest.param(553, b"5.1.2 bad destination system address", RCPT, FAIL, UNKNOWN, id="5.1.2"),
    pytest.param(550, b"Requested action not taken: mailbox unavailable", RCPT, FAIL, UNKNOWN, id="550-words"),
    pytest.param(550, "用户不存在".encode(), RCPT, FAIL, UNKNOWN, id="zh-user-unknown"),
    pytest.param(550, b"5.1.1 user unknown", CONTENT, FAIL, UNKNOWN, id="5.1.1-after-data"),
    pytest.param(550, b"5.7.1 <bob@x>: Recipient address rejected: Access denied", RCPT, FAIL, RECIPIENT,
                 id="5.7.1-recipient-policy"),
    pytest.param(550, b"5.2.1 mailbox disabled, not accepting messages", RCPT, FAIL, RECIPIENT, id="5.2.1"),
    pytest.param(550, b"5.4.1 Recipient address rejected: Access denied", RCPT, FAIL, RECIPIENT,
                 id="microsoft-5.4.1"),
    pytest.param(553, b"5.6.7 Non-ASCII addresses not permitted for that recipient", RCPT, FAIL, RECIPIENT,
                 id="rfc6531-5.6.7-rcpt"),
    pytest.param(554, b"Transaction failed", RCPT, FAIL, RECIPIENT, id="bare-554-rcpt"),
    pytest.param(550, b"Message rejected as spam", RCPT, FAIL, RECIPIENT, id="bare-words-rcpt"),
    # -- answers about our account, sender or connection: counted by the breaker
    pytest.param(550, b"5.7.1 Sender address rejected: not owned by user", MAIL, FAIL, SENDER, id="mail-5.7.1"),
    pytest.param(553, b"5.1.8 Sender address rejected: Domain not found", RCPT, FAIL, SENDER,
                 id="5.1.8-sender-at-rcpt"),
    pytest.param(554, b"5.7.1 <bob@x>: Relay access denied", RCPT, FAIL, SENDER, id="postfix-relay-at-rcpt"),
    pytest.param(554, b"5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", RCPT,
                 FAIL, SENDER, id="rbl-at-rcpt"),
    pytest.param(550, b"5.7.26 This mail is unauthenticated (DMARC)", RCPT, FAIL, SENDER, id="5.7.26-rcpt"),
    pytest.param(530, b"5.7.0 Authentication required", MAIL, FAIL, SENDER, id="auth-at-mail"),
    pytest.param(554, b"5.7.1 Message rejected: looks like spam", CONTENT, FAIL, SENDER, id="policy-at-data"),
    pytest.param(554, b"5.3.4 Message too big for system", CONTENT, FAIL, SENDER, id="5.3.4"),
    pytest.param(550, b"5.3.0 Mail system full", RCPT, FAIL, SENDER, id="5.3.x-at-rcpt"),
    pytest.param(501, b"5.5.4 Syntax error in parameters", RCPT, FAIL, SENDER, id="5.5.x-protocol"),
    pytest.param(553, b"5.6.7 Non-ASCII addresses not permitted for that sender", MAIL, FAIL, SENDER,
                 id="rfc6531-5.6.7-mail"),
    pytest.param(554, b"Transaction failed", CONTENT, FAIL, SENDER, id="bare-554-data"),
    # -- 4xx: one recipient backs off alone; the server's or ours waits as before
    pytest.param(421, b"4.7.0 Try again later, closing connection", RCPT, RETRY, RECIPIENT, id="421-at-rcpt"),
    pytest.param(450, b"4.2.1 Mailbox temporarily unavailable", RCPT, RETRY, RECIPIENT, id="450-rcpt"),
    pytest.param(451, b"4.7.1 <x@y>: Recipient address rejected: greylisted", RCPT, RETRY, RECIPIENT,
                 id="greylisting"),
    pytest.param(450, b"4.1.1 <x@y>: Recipient address rejected: unverified address", RCPT, RETRY, RECIPIENT,
                 id="450-4.1.1"),
    pytest.param(451, b"Temporary local problem", RCPT, RETRY, RECIPIENT, id="bare-451-rcpt"),
    pytest.param(450, b"4.2.1 mailbox busy", CONTENT, RETRY, RECIPIENT, id="4.2.1-after-data"),
    pytest.param(451, b"4.7.1 too many messages, slow down", RCPT, RETRY, SENDER, id="rate-limit-at-rcpt"),
    pytest.param(451, b"4.3.0 Temporary local problem, try again later", CONTENT, RETRY, SENDER,
                 id="451-after-data"),
    pytest.param(451, b"4.3.0 Temporary local problem", RCPT, RETRY, SENDER, id="4.3.0-at-rcpt"),
    pytest.param(450, b"4.7.1 Sender address rejected: try later", MAIL, RETRY, SENDER, id="450-mail"),
    pytest.param(421, b"4.7.0 Try again later, closing connection", MAIL, RECONNECT, SENDER, id="421-at-mail"),
    pytest.param(421, b"Service not available", DATA, RECONNECT, SENDER, id="421-at-data-command"),
    pytest.param(421, b"4.4.2 timeout", CONTENT, RETRY, SENDER, id="421-after-content"),
]


@pytest.mark.parametrize(("code", "resp", "stage", "action", "about"), ANSWERS)
def test_an_answer_is_read_by_enhanced_code_and_stage_before_words(code, resp, stage, action, about):
    reading = read_answer(code, resp, stage)
    assert (reading.action, reading.about) == (action, about)
    assert reading.enhanced == enhanced_status(resp)
