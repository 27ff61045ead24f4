"""Internationalized addresses through a real Postfix with ``smtputf8_enable = yes`` (issue #17 item 8).

`crm-automation send` (our SmtpTransport) submits to the private Postfix of
tests/fixtures/postfix.py, whose virtual delivery agent writes each message
into the recipient's Maildir; the test reads what Postfix delivered and what
its log says, never our own records alone.
"""

from __future__ import annotations

import time
from email import policy
from email.parser import Parser
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.fixtures.postfix")

from tests.fixtures.postfix import CUSTOMER_DOMAIN, IDN_DOMAIN, UTF8_CUSTOMER, Postfix  # noqa: E402
from tests.integration.test_send_kill import cli, sends, write_workspace  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def delivered(maildir: Path, message_id: str, timeout: float = 30) -> bytes:
    """The message with ``message_id`` once Postfix's virtual agent wrote it into ``maildir`` (the Postfix
    instance is shared by the session, so other tests may have delivered there too)."""
    deadline = time.monotonic() + timeout
    needle = f"Message-ID: {message_id}".encode()
    while True:
        for p in sorted(maildir.glob("new/*")) + sorted(maildir.glob("cur/*")):
            raw = p.read_bytes()
            if needle in raw:
                return raw
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message_id} not delivered into {maildir} within {timeout}s")
        time.sleep(0.2)


@pytest.mark.timeout(120)
def test_postfix_delivers_a_non_ascii_local_part_and_an_idn_domain_from_our_transport(tmp_path, postfix: Postfix):
    rows = [{"email": UTF8_CUSTOMER, "name": "张三", "company": "甲"},
            {"email": "alice@例子.中国", "name": "Alice", "company": "乙"}]
    cfg = write_workspace(tmp_path, postfix, rows)
    assert cli(cfg, "sync").returncode == 0
    r = cli(cfg, "send")
    assert r.returncode == 0, r.stdout + r.stderr
    mids = {s["customer_key"]: s["message_id"] for s in sends(cfg)}
    assert {s["status"] for s in sends(cfg)} == {"sent"}

    zhang = delivered(postfix.directory / "mail" / CUSTOMER_DOMAIN / "wangfang", mids[UTF8_CUSTOMER])
    msg = Parser(policy=policy.default).parsestr(zhang.decode("utf-8"))
    assert msg["To"].addresses[0].addr_spec == UTF8_CUSTOMER
    assert "张三您好" in msg.get_body(("plain",)).get_content()
    alice = delivered(postfix.directory / "mail" / IDN_DOMAIN / "alice", mids["alice@例子.中国"])
    assert f"To: Alice <alice@{IDN_DOMAIN}>".encode() in alice
    log = postfix.log_text().splitlines()
    for rcpt in (UTF8_CUSTOMER, f"alice@{IDN_DOMAIN}"):
        assert any(f"to=<{rcpt}>" in line and "status=sent (delivered to maildir)" in line for line in log), rcpt
