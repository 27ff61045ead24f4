"""SmtpTransport against a real aiosmtpd server on loopback: assert what the server received."""

from __future__ import annotations

import json
import shlex
import socket
import sys
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from crm_automation.config import load_config
from crm_automation.credentials import Credentials
from crm_automation.errors import (
    ConfigError,
    PermanentSendError,
    ServiceError,
    TransientSendError,
    UncertainSendError,
)
from crm_automation.transports.smtp import SmtpTransport, frame_message
from tests.fixtures.smtpd import TEST_PASSWORD, TEST_TOKEN, TEST_USER

pytestmark = pytest.mark.integration

SENDER = "sales@example.com"


def make_message(n: int = 1, to: str = "bob@example.net", body: str | None = None) -> tuple[bytes, str]:
    msg = EmailMessage()
    mid = f"<test-{n}-{time.monotonic_ns()}@example.com>"
    msg["From"] = f"销售部 <{SENDER}>"
    msg["To"] = to
    msg["Subject"] = f"你好 {n}"
    msg["Message-ID"] = mid
    msg.set_content(body if body is not None else f"第 {n} 封\nline two\n")
    return msg.as_bytes(policy=policy.SMTP), mid


def write_config(tmp_path: Path, **outbound: object) -> Path:
    """A minimal valid workspace config with an [outbound] smtp section."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in outbound.items()]  # JSON scalars are valid TOML
    text = (
        "[sheet]\nsource = \"csv\"\npath = \"customers.csv\"\n\n"
        "[mailbox]\nsource = \"maildir\"\npath = \"inbox\"\n\n"
        "[outbound]\ntransport = \"smtp\"\nfrom = \"Sales <sales@example.com>\"\n" + "\n".join(lines) + "\n"
    )
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def transport_for(tmp_path: Path, srv, **extra: object) -> SmtpTransport:
    opts: dict[str, object] = {"host": srv.host, "port": srv.port, "security": srv.security, "timeout": 5.0}
    if srv.ca_file is not None:
        opts["ca_file"] = str(srv.ca_file)
    opts.update(extra)
    return SmtpTransport.from_config(load_config(write_config(tmp_path, **opts)))


# -- plain, TLS, AUTH -------------------------------------------------------------------------------


def test_plain_loopback_delivers_exact_bytes_and_envelope(tmp_path, smtpd):
    raw, mid = make_message(1)
    with transport_for(tmp_path, smtpd) as t:
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    assert len(smtpd.messages) == 1
    got = smtpd.messages[0]
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ["bob@example.net"]
    assert got.message_id == mid
    assert got.raw == raw
    assert got.message["Subject"] == "你好 1"


def test_starttls_with_test_ca_and_password_auth(tmp_path, smtpd_tls, monkeypatch):
    monkeypatch.setenv("TEST_SMTP_PW", TEST_PASSWORD)
    raw, mid = make_message(2)
    t = transport_for(tmp_path, smtpd_tls, username=TEST_USER, password_env="TEST_SMTP_PW")
    t.open()
    t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    t.close()
    assert [m.message_id for m in smtpd_tls.messages] == [mid]
    assert smtpd_tls.messages[0].login == TEST_USER
    assert (smtpd_tls.handler.auth_attempts[-1][1]) is True


def test_implicit_tls_port_465_style(tmp_path, smtpd_ssl, monkeypatch):
    monkeypatch.setenv("TEST_SMTP_PW", TEST_PASSWORD)
    raw, mid = make_message(3)
    with transport_for(tmp_path, smtpd_ssl, username=TEST_USER, password_env="TEST_SMTP_PW") as t:
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    assert smtpd_ssl.handler.message_ids == [mid]
    assert smtpd_ssl.messages[0].login == TEST_USER


@pytest.mark.parametrize("kind", ["smtpd_tls", "smtpd_ssl"])
def test_untrusted_ca_is_refused(tmp_path, request, kind, untrusted_ca_file, monkeypatch):
    srv = request.getfixturevalue(kind)
    monkeypatch.setenv("TEST_SMTP_PW", TEST_PASSWORD)
    t = transport_for(tmp_path, srv, ca_file=str(untrusted_ca_file), username=TEST_USER, password_env="TEST_SMTP_PW")
    with pytest.raises(ServiceError) as ei:
        t.open()
    text = str(ei.value)
    assert f"{srv.host}:{srv.port}" in text
    assert "certificate verify failed" in text
    assert TEST_PASSWORD not in text
    assert srv.handler.auth_attempts == []
    assert srv.messages == []


def test_system_trust_store_refuses_a_private_ca(tmp_path, smtpd_ssl, monkeypatch):
    """No ca_file: the default context must not trust the test CA (verification is on)."""
    monkeypatch.setenv("TEST_SMTP_PW", TEST_PASSWORD)
    t = SmtpTransport(smtpd_ssl.host, smtpd_ssl.port, security="ssl", timeout=5,
                      credentials=Credentials(TEST_USER, password=TEST_PASSWORD))
    with pytest.raises(ServiceError, match="TLS failed"):
        t.open()


def test_bad_password_is_a_service_error_without_the_password(tmp_path, smtpd_tls, monkeypatch):
    wrong = "wrong-Secret-123"
    monkeypatch.setenv("TEST_SMTP_PW", wrong)
    t = transport_for(tmp_path, smtpd_tls, username=TEST_USER, password_env="TEST_SMTP_PW")
    with pytest.raises(ServiceError) as ei:
        t.open()
    err = ei.value
    assert type(err) is ServiceError
    assert err.exit_code == 3
    text = f"{err} {err.hint}"
    assert wrong not in text
    assert TEST_USER in text
    assert f"{smtpd_tls.host}:{smtpd_tls.port}" in text
    assert "535" in text
    assert smtpd_tls.handler.auth_attempts
    assert not any(ok for _, ok in smtpd_tls.handler.auth_attempts)


def test_missing_password_env_is_a_config_error(tmp_path, smtpd_tls, monkeypatch):
    monkeypatch.delenv("TEST_SMTP_UNSET", raising=False)
    t = transport_for(tmp_path, smtpd_tls, username=TEST_USER, password_env="TEST_SMTP_UNSET")
    with pytest.raises(ConfigError, match="TEST_SMTP_UNSET"):
        t.open()
    assert smtpd_tls.connections == 0


def _token_command(token: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(f'print({token!r})')}"


def test_xoauth2_with_token_command(tmp_path, smtpd_tls):
    raw, mid = make_message(4)
    with transport_for(tmp_path, smtpd_tls, username=TEST_USER,
                       oauth2_token_command=_token_command(TEST_TOKEN)) as t:
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    assert smtpd_tls.handler.auth_attempts == [("XOAUTH2", True)]
    assert smtpd_tls.handler.message_ids == [mid]


def test_xoauth2_bad_token_is_refused_without_leaking_it(tmp_path, smtpd_tls):
    bad = "ya29.expired-token-value"
    t = transport_for(tmp_path, smtpd_tls, username=TEST_USER, oauth2_token_command=_token_command(bad))
    with pytest.raises(ServiceError) as ei:
        t.open()
    assert bad not in f"{ei.value} {ei.value.hint}"
    assert "login refused" in str(ei.value)
    assert smtpd_tls.handler.auth_attempts == [("XOAUTH2", False)]


def test_nothing_listening_names_host_and_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = SmtpTransport("127.0.0.1", port, security="none", timeout=2)
    with pytest.raises(ServiceError, match=f"127.0.0.1:{port}.*cannot connect"):
        t.open()


def test_starttls_required_but_not_offered(tmp_path, smtpd):
    t = SmtpTransport(smtpd.host, smtpd.port, security="starttls", timeout=2)
    with pytest.raises(ServiceError, match="does not offer STARTTLS"):
        t.open()


def test_plain_text_off_loopback_is_refused_before_connecting():
    with pytest.raises(ConfigError, match="clear text"):
        SmtpTransport("smtp.example.com", 25, security="none")


# -- answers ---------------------------------------------------------------------------------------


def test_4xx_at_rcpt_is_transient_and_the_connection_stays_usable(tmp_path, smtpd):
    smtpd.handler.rcpt_tempfail = 1
    raw, mid = make_message(5)
    with transport_for(tmp_path, smtpd) as t:
        with pytest.raises(TransientSendError) as ei:
            t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
        assert ei.value.code == 451
        assert "greylisted" in str(ei.value)
        assert smtpd.messages == []
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    assert smtpd.handler.message_ids == [mid]
    assert smtpd.connections == 1


def test_4xx_after_data_is_transient_and_not_recorded(tmp_path, smtpd):
    smtpd.handler.data_tempfail = 1
    raw, mid = make_message(6)
    with transport_for(tmp_path, smtpd) as t:
        with pytest.raises(TransientSendError) as ei:
            t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
        assert ei.value.code == 451
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    assert smtpd.handler.message_ids == [mid]


def test_5xx_recipient_is_permanent_with_the_servers_words(tmp_path, smtpd):
    smtpd.handler.reject["gone@example.net"] = "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown"
    raw, mid = make_message(7, to="gone@example.net")
    with transport_for(tmp_path, smtpd) as t:
        with pytest.raises(PermanentSendError) as ei:
            t.send(raw, sender=SENDER, recipients=["gone@example.net"], message_id=mid)
        ok_raw, ok_mid = make_message(8)
        t.send(ok_raw, sender=SENDER, recipients=["bob@example.net"], message_id=ok_mid)
    assert ei.value.code == 550
    assert "User unknown" in str(ei.value)
    assert ei.value.exit_code == 1
    assert smtpd.handler.message_ids == [ok_mid]


def test_5xx_after_data_is_permanent(tmp_path, smtpd):
    smtpd.handler.data_reply = "554 5.7.1 Message rejected: looks like spam"
    raw, mid = make_message(9)
    with transport_for(tmp_path, smtpd) as t, pytest.raises(PermanentSendError) as ei:
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    assert ei.value.code == 554
    assert "looks like spam" in str(ei.value)


def test_partial_refusal_sends_to_nobody(tmp_path, smtpd):
    smtpd.handler.reject["gone@example.net"] = "550 5.1.1 User unknown"
    raw, mid = make_message(10)
    with transport_for(tmp_path, smtpd) as t, pytest.raises(PermanentSendError):
        t.send(raw, sender=SENDER, recipients=["bob@example.net", "gone@example.net"], message_id=mid)
    assert smtpd.messages == []


def test_line_breaks_in_envelope_addresses_are_refused(tmp_path, smtpd):
    raw, mid = make_message(11)
    with transport_for(tmp_path, smtpd) as t, pytest.raises(PermanentSendError, match="line break"):
        t.send(raw, sender=SENDER, recipients=["bob@example.net\r\nRCPT TO:<evil@x>"], message_id=mid)
    assert smtpd.messages == []


# -- connection drops --------------------------------------------------------------------------------


def test_dropped_idle_connection_reconnects_and_sends_once(tmp_path, smtpd):
    with transport_for(tmp_path, smtpd) as t:
        first, m1 = make_message(12)
        t.send(first, sender=SENDER, recipients=["bob@example.net"], message_id=m1)
        smtpd.drop_connections()
        time.sleep(0.05)
        second, m2 = make_message(13)
        t.send(second, sender=SENDER, recipients=["bob@example.net"], message_id=m2)
    assert smtpd.handler.message_ids == [m1, m2]
    assert smtpd.connections == 2
    assert t.connections == 2


def test_server_idle_timeout_reconnects(tmp_path, smtp_server):
    srv = smtp_server(timeout=0.3)
    with transport_for(tmp_path, srv) as t:
        first, m1 = make_message(14)
        t.send(first, sender=SENDER, recipients=["bob@example.net"], message_id=m1)
        time.sleep(0.6)
        second, m2 = make_message(15)
        t.send(second, sender=SENDER, recipients=["bob@example.net"], message_id=m2)
    assert srv.handler.message_ids == [m1, m2]
    assert srv.connections == 2


def test_drop_after_each_message_keeps_every_message_single(tmp_path, smtpd):
    smtpd.handler.drop_after = 1
    mids = []
    with transport_for(tmp_path, smtpd) as t:
        for n in range(5):
            raw, mid = make_message(100 + n)
            mids.append(mid)
            t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
            time.sleep(0.02)
    assert smtpd.handler.message_ids == mids
    assert smtpd.connections == 5


def test_drop_at_mail_from_is_retried_on_a_new_connection(tmp_path, smtpd):
    smtpd.handler.drop_at_mail = 1
    raw, mid = make_message(16)
    with transport_for(tmp_path, smtpd) as t:
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    assert smtpd.handler.message_ids == [mid]
    assert smtpd.connections == 2


def test_drop_at_mail_twice_gives_up_without_sending(tmp_path, smtpd):
    smtpd.handler.drop_at_mail = 2
    raw, mid = make_message(17)
    with transport_for(tmp_path, smtpd) as t:
        with pytest.raises(ServiceError) as ei:
            t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
        assert not isinstance(ei.value, UncertainSendError)
        assert "not sent" in str(ei.value)
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    assert smtpd.handler.message_ids == [mid]


def test_drop_mid_data_is_uncertain_and_never_resent(tmp_path, smtpd):
    smtpd.handler.drop_in_data = {2}
    with transport_for(tmp_path, smtpd) as t:
        r1, m1 = make_message(18)
        t.send(r1, sender=SENDER, recipients=["bob@example.net"], message_id=m1)
        r2, m2 = make_message(19)
        with pytest.raises(UncertainSendError) as ei:
            t.send(r2, sender=SENDER, recipients=["bob@example.net"], message_id=m2)
        assert m2 in str(ei.value)
        assert ei.value.exit_code == 3
        r3, m3 = make_message(20)
        t.send(r3, sender=SENDER, recipients=["bob@example.net"], message_id=m3)
    # The server got the content of m2 but never confirmed it; the client did not try it again.
    assert [m.message_id for m in smtpd.handler.unconfirmed] == [m2]
    assert smtpd.handler.message_ids == [m1, m3]
    assert smtpd.handler.data_seen == 3
    assert smtpd.connections == 2


def test_many_messages_share_one_connection(tmp_path, smtpd):
    mids = []
    with transport_for(tmp_path, smtpd) as t:
        for n in range(200):
            raw, mid = make_message(n, to=f"c{n}@example.net")
            mids.append(mid)
            t.send(raw, sender=SENDER, recipients=[f"c{n}@example.net"], message_id=mid)
    assert smtpd.handler.message_ids == mids
    assert len(set(mids)) == 200
    assert smtpd.connections == 1
    assert {m.connection for m in smtpd.messages} == {1}


def test_send_without_open_connects_lazily(tmp_path, smtpd):
    raw, mid = make_message(21)
    t = transport_for(tmp_path, smtpd)
    t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid)
    t.close()
    t.close()  # idempotent
    assert smtpd.handler.message_ids == [mid]


# -- framing -------------------------------------------------------------------------------------------


def test_leading_dots_and_bare_newlines_arrive_intact(tmp_path, smtpd):
    body = ".starts with a dot\n..two dots\n.\nend"
    raw = (f"From: {SENDER}\nTo: bob@example.net\nSubject: dots\nMessage-ID: <dots@example.com>\n\n{body}\n").encode()
    with transport_for(tmp_path, smtpd) as t:
        t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id="<dots@example.com>")
    got = smtpd.messages[0].raw
    assert got == raw.replace(b"\n", b"\r\n")
    assert smtpd.messages[0].message_id == "<dots@example.com>"


def test_frame_message():
    assert frame_message(b"a\r\nb\r\n") == b"a\r\nb\r\n.\r\n"
    assert frame_message(b"a\nb") == b"a\r\nb\r\n.\r\n"
    assert frame_message(b".x\r\n.\r\n") == b"..x\r\n..\r\n.\r\n"


def test_ssl_against_a_plain_server_is_a_tls_error_with_a_hint(tmp_path, smtpd, smtp_ca):
    t = SmtpTransport(smtpd.host, smtpd.port, security="ssl", ca_file=str(smtp_ca.ca_file), timeout=2)
    with pytest.raises(ServiceError) as ei:
        t.open()
    assert "TLS failed" in str(ei.value)
    assert "465" in (ei.value.hint or "")


def test_unreadable_ca_file_is_named(tmp_path, smtpd_tls):
    missing = tmp_path / "nope.pem"
    t = SmtpTransport(smtpd_tls.host, smtpd_tls.port, security="starttls", ca_file=str(missing), timeout=2)
    with pytest.raises(ServiceError, match="nope.pem"):
        t.open()
    assert smtpd_tls.connections == 0


# -- the caller's claim: its last word before the content (issue #18) -------------------------------


def test_claim_is_asked_once_before_any_content_and_no_calls_the_send_off(tmp_path, smtpd):
    asked: list[int] = []

    def claim(answer: bool):
        def ask() -> bool:
            asked.append(smtpd.handler.data_seen)  # how much content the server had seen when asked
            return answer
        return ask

    raw1, mid1 = make_message(1)
    raw2, mid2 = make_message(2)
    with transport_for(tmp_path, smtpd) as t:
        assert t.send(raw1, sender=SENDER, recipients=["bob@example.net"], message_id=mid1,
                      claim=claim(False)) is False
        assert t.send(raw2, sender=SENDER, recipients=["bob@example.net"], message_id=mid2,
                      claim=claim(True)) is True
    assert asked == [0, 0]  # each asked once, before the server saw content
    assert smtpd.handler.message_ids == [mid2]  # the one called off was never handed over
    assert smtpd.connections == 1  # the refused one was reset, not dropped


def test_claim_is_not_asked_again_when_mail_from_is_repeated_on_a_new_connection(tmp_path, smtpd):
    asked = []
    smtpd.handler.drop_at_mail = 1  # the server drops the connection at the first MAIL FROM, unanswered
    raw, mid = make_message(1)
    with transport_for(tmp_path, smtpd) as t:
        assert t.send(raw, sender=SENDER, recipients=["bob@example.net"], message_id=mid,
                      claim=lambda: asked.append(1) or True) is True
    assert asked == [1]
    assert smtpd.handler.message_ids == [mid] and smtpd.connections == 2


def test_an_error_in_claim_goes_on_and_hands_nothing_over(tmp_path, smtpd):
    def broken() -> bool:
        raise ServiceError("the log could not be written")

    raw1, mid1 = make_message(1)
    raw2, mid2 = make_message(2)
    with transport_for(tmp_path, smtpd) as t:
        with pytest.raises(ServiceError, match="the log could not be written"):
            t.send(raw1, sender=SENDER, recipients=["bob@example.net"], message_id=mid1, claim=broken)
        t.send(raw2, sender=SENDER, recipients=["bob@example.net"], message_id=mid2)  # a fresh connection
    assert smtpd.handler.message_ids == [mid2]
