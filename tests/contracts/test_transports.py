"""One behavioural suite for every Transport: the outbox folder and a real aiosmtpd over SMTP.

Each carrier harness builds the transport the way the worker does (config.toml
-> ``Workspace.load`` -> ``open_transport``) and shows what the carrier holds:
the outbox's files, every one of them (a leftover temporary file would count
as a second copy), or the messages aiosmtpd confirmed. Tests assert on what
arrived, never on a mocked library (STYLE §3).
"""

from __future__ import annotations

import functools
import itertools
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from crm_automation.errors import (
    PermanentSendError,
    ServiceError,
    TransientSendError,
    UncertainSendError,
)
from crm_automation.transports.base import Transport
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.dovecot import free_port

SENDER = "sales@example.com"
TO = "bob@example.net"
_n = itertools.count(1)


def message(to: str = TO, *, body: str | None = None, message_id: str | None = None) -> tuple[bytes, str]:
    """A message as the worker hands it over: bytes with CRLF line ends (``policy.SMTP``), and its Message-ID.

    The default body has lines that SMTP must dot-stuff (RFC 5321 4.5.2) and
    8-bit UTF-8 text, so "the exact bytes" is a real check on both carriers.
    """
    n = next(_n)
    mid = message_id or f"<contract-{n}@example.com>"
    msg = EmailMessage()
    msg["From"] = f"销售部 <{SENDER}>"
    msg["To"] = to
    msg["Subject"] = f"报价单 {n}"
    msg["Message-ID"] = mid
    text = body if body is not None else f"您好，第 {n} 封。\n.\n..two dots\n.leading dot\nlast line\n"
    msg.set_content(text, cte="8bit")
    return msg.as_bytes(policy=policy.SMTP), mid


def _open(root: Path, outbound_toml: str) -> Transport:
    """The transport as the worker gets it: config.toml, Workspace.load, open_transport."""
    return Workspace.load(make_workspace(root, outbound=outbound_toml)).open_transport()


class OutboxHarness:
    """``[outbound] transport = "outbox"``: one ``.eml`` file per Message-ID."""

    name = "outbox"
    #: Handing the same Message-ID over again rewrites its one file.
    copies_of_a_resend = 1

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "ws"
        self.folder = self.root / "var" / "outbox"

    @property
    def where(self) -> str:
        return str(self.folder)

    def make(self) -> Transport:
        return _open(self.root, 'transport = "outbox"\noutbox = "var/outbox"')

    def make_unreachable(self) -> Transport:
        """An outbox below a regular file: no folder can be made there (tests run as root, so no chmod)."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "afile").write_text("not a folder\n", encoding="utf-8")
        self.folder = self.root / "afile" / "outbox"
        return _open(self.root, 'transport = "outbox"\noutbox = "afile/outbox"')

    def delivered(self) -> list[bytes]:
        """Every file in the outbox, whatever its name."""
        if not self.folder.is_dir():
            return []
        return [p.read_bytes() for p in sorted(self.folder.iterdir())]


class SmtpHarness:
    """``[outbound] transport = "smtp"`` to a real aiosmtpd on loopback (plain SMTP is allowed there)."""

    name = "smtp"
    #: SMTP cannot take a message back: a second hand-over is a second delivery, which is why sends are
    #: keyed in the store and never repeated (SPEC §10).
    copies_of_a_resend = 2

    def __init__(self, tmp: Path, smtp_server) -> None:
        self.root = tmp / "ws"
        self.server = smtp_server()
        self.port = self.server.port

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _toml(self, port: int) -> str:
        return f'transport = "smtp"\nhost = "127.0.0.1"\nport = {port}\nsecurity = "none"\ntimeout = 5'

    def make(self) -> Transport:
        return _open(self.root, self._toml(self.port))

    def make_unreachable(self) -> Transport:
        """Nothing listening on the port."""
        self.port = free_port()
        return _open(self.root, self._toml(self.port))

    def delivered(self) -> list[bytes]:
        """What the server confirmed with 250 after DATA."""
        return [m.raw for m in self.server.messages]


@pytest.fixture(params=["outbox", pytest.param("smtp", marks=pytest.mark.integration)])
def carrier(request, tmp_path):
    if request.param == "outbox":
        return OutboxHarness(tmp_path)
    return SmtpHarness(tmp_path, request.getfixturevalue("smtp_server"))


@pytest.fixture(params=[pytest.param("smtp", marks=pytest.mark.integration)])
def answering_carrier(request, tmp_path):
    """The carriers that answer each message and may refuse it: SMTP only.

    The outbox has no one at the other end to say 4xx or 5xx: a file is
    written or it is not, and when it is not, the cause is the disk or the
    folder (full, read-only, not a folder), which holds for every message
    alike. That is a :class:`ServiceError` (stop the stage, retry next pass),
    checked by the unreachable-carrier test, never a per-message
    TransientSendError or PermanentSendError.
    """
    return SmtpHarness(tmp_path, request.getfixturevalue("smtp_server"))


# ------------------------------------------------------------------------------------------ delivery


def test_open_send_close_delivers_the_exact_bytes_once(carrier):
    t = carrier.make()
    raw, mid = message()
    t.open()
    t.send(raw, sender=SENDER, recipients=[TO], message_id=mid)
    t.close()
    assert carrier.delivered() == [raw]


def test_a_batch_over_one_open_delivers_each_message_once(carrier):
    t = carrier.make()
    sent = [message(f"c{i}@example.net") for i in range(5)]
    t.open()
    for raw, mid in sent:
        t.send(raw, sender=SENDER, recipients=[TO], message_id=mid)
    t.close()
    assert sorted(carrier.delivered()) == sorted(raw for raw, _ in sent)


def test_a_message_of_one_long_line_and_no_final_newline_arrives_whole(carrier):
    """Exact bytes at the edges: no trailing CRLF from the caller, a 900-character line (RFC 5322 limit 998)."""
    t = carrier.make()
    raw, mid = message()
    raw = raw.rstrip(b"\r\n") + b"\r\n" + b"z" * 900
    t.open()
    t.send(raw, sender=SENDER, recipients=[TO], message_id=mid)
    t.close()
    got = carrier.delivered()
    assert len(got) == 1
    # SMTP ends DATA on a line of its own, so the server sees the CRLF the framing had to add.
    assert got[0] in (raw, raw + b"\r\n")


def test_the_same_message_id_twice(carrier):
    """The outbox rewrites the one file named by the Message-ID, never a second file; SMTP delivers twice.

    Neither carrier dedupes for the worker: exactly-once comes from the
    store's send keys. The outbox rewriting in place is what lets a rerun of
    a dry run compare like with like.
    """
    t = carrier.make()
    first, mid = message()
    second, _ = message(body="the second rendering\n", message_id=mid)
    t.open()
    t.send(first, sender=SENDER, recipients=[TO], message_id=mid)
    t.send(second, sender=SENDER, recipients=[TO], message_id=mid)
    t.close()
    got = carrier.delivered()
    assert len(got) == carrier.copies_of_a_resend
    assert got[-1] == second


# ------------------------------------------------------------------------------------------ failures


def test_an_unreachable_carrier_is_a_service_error_before_anything_is_handed_over(carrier):
    """An outbox under a regular file; a closed SMTP port. The stage stops; every message stays queued."""
    t = carrier.make_unreachable()
    with pytest.raises(ServiceError) as e:
        t.open()
    assert not isinstance(e.value, UncertainSendError)  # nothing can have been delivered
    assert carrier.where in str(e.value)
    raw, mid = message()
    with pytest.raises(ServiceError) as e2:  # a send without a successful open says the same
        t.send(raw, sender=SENDER, recipients=[TO], message_id=mid)
    assert not isinstance(e2.value, UncertainSendError)
    assert carrier.where in str(e2.value)
    t.close()
    assert carrier.delivered() == []


@pytest.mark.parametrize("call", ["open", "send"])
def test_an_unreachable_carrier_says_what_to_do_next(carrier, call, request):
    """STYLE §4: every CrmError carries ``hint``, the next step (the CLI prints it under the message)."""
    t = carrier.make_unreachable()
    raw, mid = message()
    act = t.open if call == "open" else functools.partial(t.send, raw, sender=SENDER, recipients=[TO], message_id=mid)
    with pytest.raises(ServiceError) as e:
        act()
    if not e.value.hint:
        pytest.fail(f"{carrier.name}.{call}: {e.value} has no hint")
    t.close()


@pytest.mark.parametrize(("stage", "answer", "error", "code"), [
    pytest.param("RCPT", "451 4.7.1 greylisted, try again later", TransientSendError, 451, id="rcpt-4xx"),
    pytest.param("DATA", "451 4.3.0 Temporary local problem, try again later", TransientSendError, 451,
                 id="data-4xx"),
    pytest.param("RCPT", "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown",
                 PermanentSendError, 550, id="rcpt-5xx"),
    pytest.param("DATA", "554 5.7.1 Message rejected: looks like spam", PermanentSendError, 554, id="data-5xx"),
])
def test_a_refusal_is_typed_by_what_the_caller_does_next(answering_carrier, stage, answer, error, code):
    """4xx: retry on a later pass (TransientSendError); 5xx: mark this send failed (PermanentSendError).

    Either way nothing was delivered and the transport goes on to the next message.
    """
    srv = answering_carrier.server
    t = answering_carrier.make()
    refused, mid = message("gone@example.net")
    if stage == "RCPT":
        srv.handler.reject["gone@example.net"] = answer
    else:
        srv.handler.data_reply = answer
    t.open()
    with pytest.raises(error) as e:
        t.send(refused, sender=SENDER, recipients=["gone@example.net"], message_id=mid)
    assert type(e.value) is error
    assert e.value.code == code
    assert answering_carrier.where in str(e.value)
    assert answer.split(" ", 1)[1] in str(e.value)  # the server's own words
    assert answering_carrier.delivered() == []
    srv.handler.reject.clear()
    srv.handler.data_reply = None
    ok, ok_mid = message()
    t.send(ok, sender=SENDER, recipients=[TO], message_id=ok_mid)
    t.close()
    assert answering_carrier.delivered() == [ok]


# ------------------------------------------------------------------------------------------ lifetime


def test_close_without_open_or_twice_is_harmless(carrier):
    t = carrier.make()
    t.close()
    t.close()
    raw, mid = message()
    t.open()
    t.open()  # a second open within a batch is harmless too
    t.send(raw, sender=SENDER, recipients=[TO], message_id=mid)
    t.close()
    t.close()
    assert carrier.delivered() == [raw]


def test_a_transport_opens_again_for_the_next_batch(carrier):
    t = carrier.make()
    sent = [message(), message()]
    for raw, mid in sent:
        t.open()
        t.send(raw, sender=SENDER, recipients=[TO], message_id=mid)
        t.close()
    assert sorted(carrier.delivered()) == sorted(raw for raw, _ in sent)


def test_an_internationalized_message_arrives_as_it_was_built(carrier):
    """Issue #17 item 8: a UTF-8 ``To`` (RFC 6532) for 张三@example.cn, and an IDN recipient (RFC 6530)."""
    t = carrier.make()
    raw, mid = message(to="张三@example.cn")
    raw = raw.replace(b"To: =?utf-8?b?5byg5LiJ?=@example.cn", "To: 张三@example.cn".encode())
    assert "To: 张三@example.cn".encode() in raw
    idn, idn_mid = message(to="alice@xn--fsqu00a.xn--fiqs8s")
    t.open()
    t.send(raw, sender=SENDER, recipients=["张三@example.cn"], message_id=mid)
    t.send(idn, sender=SENDER, recipients=["alice@例子.中国"], message_id=idn_mid)
    t.close()
    assert sorted(carrier.delivered()) == sorted([raw, idn])


def test_the_transport_has_a_name(carrier):
    t = carrier.make()
    assert isinstance(t.name, str)
    assert t.name


# ------------------------------------------------------------------------------------------ recovery


def test_handed_over_knows_exactly_what_was_delivered_or_says_it_cannot_tell(carrier):
    """Crash recovery asks the carrier first (issue #10, item 4): a set of the ids it holds, or None."""
    t = carrier.make()
    raw, mid = message()
    _, never = message()
    t.open()
    t.send(raw, sender=SENDER, recipients=[TO], message_id=mid)
    t.close()
    answer = t.handed_over([mid, never])
    assert answer is None or answer == {mid}
    if carrier.name == "outbox":
        assert answer == {mid}  # a file renamed into place is a message handed over
