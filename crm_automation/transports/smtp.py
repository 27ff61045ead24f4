"""The SMTP transport: one verified connection per batch, exactly-once aware.

Why it does not simply call ``smtplib.SMTP.sendmail``: ``sendmail`` reports a
dropped connection the same way whether it broke at ``MAIL FROM`` (nothing was
handed over, resending is safe) or while the server was deciding about a
message it had already received (it may have been delivered). SPEC §10 needs
those two cases told apart, so this module walks the transaction itself with
smtplib's ``mail``/``rcpt``/``docmd``/``send``/``getreply``:

* a drop before the server answered ``354`` to ``DATA``: reconnect once and
  send the message again (the idle-timeout case: servers close connections
  that sit unused between batches);
* a drop after the content went out and before the final reply:
  :class:`~crm_automation.errors.UncertainSendError`, never a silent resend.

Answers map onto the error tree by what the worker does next, read by
:func:`read_answer` from the RFC 3463 enhanced code and the stage (MAIL FROM,
RCPT, DATA) before any words (issue #17): 4xx is
:class:`~crm_automation.errors.TransientSendError` (retry on a later pass),
5xx is :class:`~crm_automation.errors.PermanentSendError` carrying the
server's own words (mark the send failed), a sending quota is
:class:`~crm_automation.errors.QuotaExceededError`, and connection, TLS or
login failures are :class:`~crm_automation.errors.ServiceError` naming
host:port and user but never the secret. Each send error carries
:class:`~crm_automation.errors.About`: whether the answer concerns one
recipient (unknown, mailbox full, policy, greylisting) or our account,
sender or connection, which alone the 5xx circuit breaker counts.

Internationalized addresses (RFC 6530-6532): an IDN domain goes out as
A-labels; a non-ASCII local part (or UTF-8 in the headers) with ``SMTPUTF8``
when the server offers it, otherwise that message alone fails.

Only this module imports smtplib (ruff TID251).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import smtplib  # noqa: TID251 - this is the one module allowed to use it
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parseaddr
from typing import TYPE_CHECKING, Literal, NoReturn, Self

from crm_automation.addresses import WireAddress, wire_address
from crm_automation.config import is_loopback
from crm_automation.credentials import Credentials, load_credentials
from crm_automation.errors import (
    About,
    ConfigError,
    CrmError,
    DataError,
    PermanentSendError,
    QuotaExceededError,
    ServiceError,
    TransientSendError,
    UncertainSendError,
)

if TYPE_CHECKING:
    from types import TracebackType

    from crm_automation.config import AccountSection, Config

log = logging.getLogger(__name__)

Security = Literal["ssl", "starttls", "none"]

DEFAULT_PORTS: dict[str, int] = {"ssl": 465, "starttls": 587, "none": 25}
"""RFC 8314 implicit TLS on 465, RFC 6409 submission with STARTTLS on 587, plain SMTP on 25."""

_BARE_LF = re.compile(rb"(?<!\r)\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_SERVER_GONE = 421  # RFC 5321 4.2.3: "service not available, closing transmission channel"


class _Dropped(Exception):  # noqa: N818 - internal control flow, not an error for callers
    """The connection ended before the message content was handed over: safe to resend."""


def frame_message(message: bytes) -> bytes:
    """The DATA payload for ``message``: CRLF line ends, dot-stuffed, terminated (RFC 5321 4.5.2).

    Messages built with ``policy=SMTP`` already use CRLF, so the bare-LF
    rewrite is skipped by a cheap count; the bytes are otherwise sent as-is.
    """
    if message.count(b"\n") != message.count(b"\r\n"):
        message = _BARE_LF.sub(b"\r\n", message)
    if message.startswith(b".") or b"\n." in message:
        message = _LEADING_DOT.sub(b"..", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"


def _bare(addr: str) -> str:
    """``Name <a@b>`` -> ``a@b``; a plain address passes untouched (smtplib's quoteaddr parses every time)."""
    if "<" in addr or " " in addr:
        return parseaddr(addr)[1] or addr
    return addr


def _text(resp: bytes | str) -> str:
    """A server reply as one readable line (multi-line replies are joined)."""
    if isinstance(resp, bytes):
        resp = resp.decode("utf-8", "replace")
    return " ".join(resp.split())


class SmtpConnection:
    """One SMTP connection that lives for a batch: TLS, login, and forgetting a broken one.

    Why apart from the transaction (:class:`SmtpTransport`): what it takes to
    reach and log in to a server (certificates, STARTTLS, XOAUTH2, the secret
    kept out of every message) is one job; walking MAIL/RCPT/DATA so that
    "not handed over" and "uncertain" stay apart is another.
    """

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        security: Security = "ssl",
        credentials: Credentials | Callable[[], Credentials] | None = None,
        ca_file: str | None = None,
        timeout: float = 30.0,
        allow_insecure: bool = False,
        local_hostname: str | None = None,
    ) -> None:
        """Describe the server; nothing connects until :meth:`open` or the first :meth:`send`.

        Args:
            host: server name; it must match the server certificate.
            port: default 465 for ``ssl``, 587 for ``starttls``, 25 for ``none``.
            security: ``ssl`` (implicit TLS), ``starttls``, or ``none`` (loopback
                or ``allow_insecure`` only, SPEC §11).
            credentials: a login, or a callable producing one; a callable is
                called on every (re)connect so an OAuth2 token command can hand
                out a fresh token for a long batch.
            ca_file: a PEM bundle to trust instead of the system store.
            timeout: seconds for connecting and for each server reply.
            allow_insecure: permit ``security = "none"`` off loopback.
            local_hostname: the EHLO name; default the machine's FQDN, looked up once.
        """
        if security not in DEFAULT_PORTS:
            raise ConfigError(f"outbound.security is {security!r} (expected \"ssl\", \"starttls\" or \"none\")")
        if security == "none" and not allow_insecure and not is_loopback(host):
            raise ConfigError(
                f"outbound.security = \"none\" would send mail and the password in clear text to {host!r}; "
                "it is allowed only on loopback or with outbound.allow_insecure = true"
            )
        self.host = host
        self.port = port or DEFAULT_PORTS[security]
        self.security: Security = security
        self._credentials = credentials
        self.ca_file = ca_file
        self.timeout = timeout
        self._local_hostname = local_hostname
        self._smtp: smtplib.SMTP | None = None
        self._user: str | None = credentials.username if isinstance(credentials, Credentials) else None
        self._secrets: tuple[str, ...] = ()
        self._size_ok = False
        self._utf8_ok = False
        self._8bit_ok = False
        self.connections = 0
        """How many connections this transport opened (reconnects included); for reports and tests."""

    # -- connection ---------------------------------------------------------------------------

    @property
    def where(self) -> str:
        """``host:port`` and the login name, for messages (never the secret)."""
        who = f" as {self._user!r}" if self._user else ""
        return f"SMTP server {self.host}:{self.port}{who}"

    def _scrub(self, text: str) -> str:
        """Remove any secret from text that goes into an exception (defence in depth)."""
        for secret in self._secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def _fail(self, what: str, err: BaseException | str, hint: str | None = None) -> ServiceError:
        detail = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        return ServiceError(self._scrub(f"{self.where}: {what}: {detail}"), hint=hint)

    def open(self) -> None:
        """Connect, secure and log in; a no-op when already connected."""
        if self._smtp is None:
            self._connect()

    def _connect(self) -> smtplib.SMTP:
        creds = self._credentials() if callable(self._credentials) else self._credentials
        if creds is not None:
            self._user = creds.username
            self._secrets = tuple(s for s in (creds.password, creds.token) if s)
        if self._local_hostname is None:
            self._local_hostname = socket.getfqdn()
        context = None
        if self.security != "none":
            try:
                context = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ValueError) as e:
                raise self._fail(f"cannot load the CA file {self.ca_file!r}", e,
                                 hint="outbound.ca_file must be a PEM file of trusted CA certificates") from None
        tls_hint = ("check outbound.host matches the server certificate; for a private CA set outbound.ca_file; "
                    "security = \"ssl\" needs port 465, \"starttls\" port 587")
        smtp: smtplib.SMTP | None = None
        try:
            if self.security == "ssl":
                smtp = smtplib.SMTP_SSL(self.host, self.port, local_hostname=self._local_hostname,
                                        timeout=self.timeout, context=context)
            else:
                smtp = smtplib.SMTP(self.host, self.port, local_hostname=self._local_hostname, timeout=self.timeout)
            smtp.ehlo()
            if self.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise self._fail("cannot secure the connection", "the server does not offer STARTTLS",
                                     hint="use security = \"ssl\" (port 465) or the provider's submission port")
                smtp.starttls(context=context)
                smtp.ehlo()
        except ServiceError:
            _quietly_close(smtp)
            raise
        except ssl.SSLError as e:
            _quietly_close(smtp)
            raise self._fail("TLS failed", e, hint=tls_hint) from None
        except (smtplib.SMTPException, OSError) as e:
            _quietly_close(smtp)
            raise self._fail("cannot connect", e, hint="check outbound.host, outbound.port and outbound.security; "
                             "is the server reachable from here?") from None
        try:
            if creds is not None and creds.username:
                _login(smtp, creds, self._fail)
        except ServiceError:
            _quietly_close(smtp)
            raise
        self._smtp = smtp
        self._size_ok = smtp.has_extn("size")
        self._utf8_ok = smtp.has_extn("smtputf8")
        self._8bit_ok = smtp.has_extn("8bitmime")
        self.connections += 1
        log.info("connected to %s:%s (%s)%s", self.host, self.port, self.security,
                 f" as {self._user}" if self._user else "")
        return smtp

    def _discard(self) -> None:
        """Forget a broken connection; the next send reconnects."""
        smtp, self._smtp = self._smtp, None
        _quietly_close(smtp)

    def close(self) -> None:
        """Say QUIT and close; errors are ignored because nothing is pending."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            _quietly_close(smtp)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()



class SmtpTransport(SmtpConnection):
    """Sends messages over one SMTP connection that lives for a batch.

    Use as ``open()``, many ``send()``, ``close()`` (or as a context manager).
    ``send`` reconnects by itself when the connection was found closed before
    a message was handed over, so a worker that pauses between messages (rate
    limits) need not care about server idle timeouts.
    """

    name = "smtp"

    @classmethod
    def from_config(cls, cfg: Config, server: AccountSection | None = None, section: str = "outbound"
                    ) -> SmtpTransport:
        """Build the transport from ``[outbound]`` or an account (``server``, issue #20); secrets at connect time."""
        ob = server if server is not None else cfg.outbound
        if not ob.host:
            raise ConfigError(f"{cfg.path}: {section}.host is required when outbound.transport = \"smtp\"")
        ca_file = str(cfg.resolve(ob.ca_file)) if ob.ca_file else None
        return cls(
            ob.host,
            ob.port,
            security=ob.security,
            credentials=lambda: load_credentials(section, ob),
            ca_file=ca_file,
            timeout=ob.timeout,
            allow_insecure=ob.allow_insecure,
        )

    def handed_over(self, message_ids: list[str]) -> set[str] | None:
        """An SMTP server cannot be asked what it received: None (recovery uses the Sent folder)."""
        return None

    # -- sending --------------------------------------------------------------------------------

    def send(self, message: bytes, *, sender: str, recipients: list[str], message_id: str,
             meanwhile: Callable[[], None] | None = None, claim: Callable[[], bool] | None = None) -> bool:
        """Hand one message over; return True only once the server accepted it with 2xx.

        ``claim`` runs once ``MAIL FROM`` went out, before its answer is read
        (nothing of the message is delivered before ``DATA``'s content); False
        resets the transaction and returns False. ``meanwhile`` runs once the
        content went out, while the server decides. Both are described in
        :class:`~crm_automation.transports.base.Transport`.

        Addresses go out as :func:`~crm_automation.addresses.wire_address`
        writes them: an IDN domain as A-labels; a non-ASCII local part, or
        UTF-8 in the headers (RFC 6532), only with ``SMTPUTF8`` (RFC 6531) when
        the server offers it, else this message alone fails.

        Raises:
            TransientSendError: a 4xx answer; nothing was delivered, retry later
                (``about`` says whether it concerns one recipient or the server).
            PermanentSendError: a 5xx answer (server's words in the message),
                a full mailbox (X.2.2), or an address this server cannot carry;
                ``about``/``recipient`` say what it is about. Mark the send failed.
            QuotaExceededError: a sending quota of our account (Gmail 5.4.5,
                Microsoft SubmissionQuotaExceeded, QQ/163 发送频率过高); wait.
            UncertainSendError: the connection broke after the content was handed
                over; it may have been delivered; never resend silently.
            ServiceError: cannot (re)connect or log in, or the server said 421
                before the content (twice); nothing was delivered.
        """
        if not recipients:
            raise PermanentSendError(f"message {message_id}: no recipients")
        env_from = _wire(sender, message_id, About.SENDER)
        env_to = [_wire(r, message_id, About.RECIPIENT) for r in recipients]
        utf8 = env_from.needs_smtputf8 or any(r.needs_smtputf8 for r in env_to) or _utf8_head(message)
        data = frame_message(message)
        smtp = self._smtp or self._connect()
        if utf8 and not self._utf8_ok:
            raise _no_smtputf8(self.where, env_from, env_to, recipients, message_id)
        once = _Once(claim)  # a reconnect repeats MAIL FROM, never the claim
        args = (env_from.address, {w.address: r for w, r in zip(env_to, recipients, strict=True)}, len(data),
                message_id, utf8, once)
        try:
            go = self._begin(smtp, *args)
        except _Dropped as e:
            log.info("%s: connection was closed (%s); reconnecting", self.where, e)
            self._discard()
            smtp = self._connect()
            try:
                go = self._begin(smtp, *args)
            except _Dropped as e2:
                self._discard()
                raise self._fail(f"connection closed again before message {message_id} was handed over "
                                 f"(not sent)", str(e2)) from None
        if not go:
            return False
        self._finish(smtp, data, recipients, message_id, meanwhile)
        return True

    def _begin(self, smtp: smtplib.SMTP, sender: str, recipients: dict[str, str], size: int, message_id: str,
               utf8: bool, claim: _Once) -> bool:
        """MAIL, RCPT for every recipient, DATA until ``354``: nothing is delivered before this returns.

        The caller's ``claim`` runs while the server answers ``MAIL FROM``;
        when it says no, the transaction is reset and this returns False.

        ``recipients`` maps each address as written on the wire to the address
        the caller gave, which a refusal names (the log and suppressions keep
        the sheet's form, e.g. ``alice@例子.中国``).

        All recipients or none: if any is refused the transaction is reset, so a
        retry never mails the accepted ones twice. A ``421`` at RCPT ends the
        loop: the server closes the channel after it (RFC 5321 §3.8).
        """
        # smtplib encodes commands as ASCII unless told otherwise; RFC 6531 §3.3 allows UTF-8 with SMTPUTF8.
        smtp.command_encoding = "utf-8" if utf8 else "ascii"
        try:
            opts = f" SIZE={size}" if self._size_ok else ""
            if utf8:
                opts += " SMTPUTF8" + (" BODY=8BITMIME" if self._8bit_ok else "")
            smtp.putcmd("MAIL", f"FROM:<{sender}>{opts}")
            if not claim.go(self._discard):
                try:
                    smtp.getreply()
                    smtp.rset()
                except (smtplib.SMTPException, OSError):
                    self._discard()  # the next message starts on a fresh connection
                return False
            code, resp = smtp.getreply()
            if code != 250:
                self._refusal(smtp, code, resp, Stage.MAIL, message_id)
            refused: list[tuple[str, int, bytes]] = []
            for rcpt in recipients:
                code, resp = smtp.docmd("RCPT", f"TO:<{rcpt}>")
                if code not in (250, 251):
                    refused.append((rcpt, code, resp))
                    if code == _SERVER_GONE:
                        break
            if refused:
                worst = max(refused, key=lambda r: (r[1] == _SERVER_GONE, r[1]))
                self._refusal(smtp, worst[1], worst[2], Stage.RCPT, message_id, recipients[worst[0]])
            code, resp = smtp.docmd("DATA")
        except smtplib.SMTPServerDisconnected as e:
            raise _Dropped(str(e)) from None
        except OSError as e:
            raise _Dropped(f"{type(e).__name__}: {e}") from None
        except smtplib.SMTPException as e:  # e.g. an over-long reply line: the server is not speaking SMTP
            self._discard()
            raise self._fail(f"protocol error before message {message_id} was handed over (not sent)", e) from None
        if code != 354:
            self._refusal(smtp, code, resp, Stage.DATA, message_id)
        return True

    def _finish(self, smtp: smtplib.SMTP, data: bytes, recipients: list[str], message_id: str,
                meanwhile: Callable[[], None] | None = None) -> None:
        """Send the content and read the verdict; a break here is uncertain, never retried."""
        try:
            smtp.send(data)
            if meanwhile is not None:
                meanwhile()  # the server's turn: the caller's next message is composed in it
            code, resp = smtp.getreply()
        except (smtplib.SMTPException, OSError) as e:
            self._discard()
            raise UncertainSendError(
                f"{self.where}: connection lost after message {message_id} to {', '.join(recipients)} was handed "
                f"over and before the server confirmed it ({type(e).__name__}: {e}); it may have been delivered, "
                f"so it is not sent again",
                hint="it is reported as uncertain; check the Sent folder or ask the recipient, then re-queue it "
                     "on purpose if it did not arrive",
            ) from None
        if 200 <= code < 300:
            log.debug("sent %s to %s", message_id, recipients)
            return
        # One recipient a message: an answer about "the" mailbox after the content is about that recipient.
        self._refusal(smtp, code, resp, Stage.CONTENT, message_id, recipients[0] if len(recipients) == 1 else None)

    def _refusal(self, smtp: smtplib.SMTP, code: int, resp: bytes, stage: Stage, message_id: str,
                 recipient: str | None = None) -> NoReturn:
        """The one place a server's refusal becomes an error, read by :func:`read_answer`, at any stage.

        Before the content nothing was delivered: the transaction is reset
        (RSET) for the next message, and an answer that is no SMTP refusal is
        a :class:`ServiceError` (not sent). After the content the transaction
        is over, and such an answer is an :class:`UncertainSendError` (it may
        have been delivered). A ``421`` closes the channel wherever it comes;
        before the content (MAIL, DATA) it means reconnect once.
        """
        if stage is Stage.CONTENT:
            text = f"{self.where}: the message {message_id} was refused after DATA with {code} {_text(resp)}"
        else:
            where = f"RCPT TO:<{recipient}>" if recipient is not None else stage.value
            text = f"{self.where}: {where} for message {message_id} answered {code} {_text(resp)}"
        if not 400 <= code < 600:
            self._discard()
            if stage is Stage.CONTENT:
                raise UncertainSendError(f"{text} (not an SMTP answer; it may have been delivered, so it is not "
                                         f"sent again)")
            raise ServiceError(f"{text} (not an SMTP answer expected here; message not sent)")
        reading = read_answer(code, resp, stage)
        if reading.action is Action.RECONNECT:
            raise _Dropped(f"{code} {_text(resp)}")
        if code == _SERVER_GONE:
            self._discard()  # the server closes the channel; the next message reconnects
        elif stage is not Stage.CONTENT:
            try:
                smtp.rset()
            except (smtplib.SMTPException, OSError):
                self._discard()
        raise _error(reading, code, text, recipient)


# ---------------------------------------------------------------- helpers of the transaction


class _Once:
    """The caller's ``claim`` of one message, asked at most once however often ``MAIL FROM`` is sent."""

    __slots__ = ("_claim",)

    def __init__(self, claim: Callable[[], bool] | None) -> None:
        self._claim = claim

    def go(self, discard: Callable[[], None]) -> bool:
        """The claim's answer (True when there is none, or it was given already).

        An error it raises leaves ``MAIL FROM`` unanswered on the wire: the
        connection is dropped (``discard``) before the error goes on, so the
        next message starts on a fresh one.
        """
        claim, self._claim = self._claim, None
        if claim is None:
            return True
        try:
            return claim()
        except BaseException:
            discard()
            raise


def _login(smtp: smtplib.SMTP, creds: Credentials, fail: Callable[..., ServiceError]) -> None:
    """AUTH with a password (PLAIN/LOGIN as offered) or XOAUTH2 with a token."""
    user = creds.username or ""
    hint = ("check outbound.username and the password in the environment variable named by "
            "outbound.password_env (Gmail, Microsoft 365, QQ Mail and 163 want an app password or "
            "authorization code, or oauth2_token_command)")
    try:
        if creds.token is not None:
            token = creds.token

            def xoauth2(challenge: bytes | None = None) -> str:
                # RFC-less Google/Microsoft SASL XOAUTH2: on failure the server sends a
                # 334 JSON challenge and expects an empty line before its final 535.
                return "" if challenge is not None else f"user={user}\x01auth=Bearer {token}\x01\x01"

            smtp.auth("XOAUTH2", xoauth2)
        else:
            smtp.login(user, creds.password or "")
    except smtplib.SMTPAuthenticationError as e:
        raise fail("login refused", f"{e.smtp_code} {_text(e.smtp_error)}", hint=hint) from None
    except UnicodeEncodeError:
        raise fail("login failed", "the user name or secret contains non-ASCII characters, "
                         "which SMTP AUTH cannot carry here", hint=hint) from None
    except (smtplib.SMTPException, OSError) as e:
        raise fail("login failed", e, hint=hint) from None


def _quietly_close(smtp: smtplib.SMTP | None) -> None:
    if smtp is not None:
        with contextlib.suppress(OSError):
            smtp.close()


def _wire(addr: str, message_id: str, about: About) -> WireAddress:
    """An envelope address as it goes on the wire, or a PermanentSendError about it (nothing sent)."""
    who = "sender" if about is About.SENDER else "recipient"
    if "\r" in addr or "\n" in addr:
        raise PermanentSendError(f"message {message_id}: envelope {who} address {addr!r} contains a line "
                                 f"break (expected a plain address like name@example.com)", about=about,
                                 recipient=None if about is About.SENDER else addr)
    try:
        return wire_address(_bare(addr))
    except DataError as e:
        raise PermanentSendError(f"message {message_id}: envelope {who} address {addr!r}: {e}", about=about,
                                 recipient=None if about is About.SENDER else addr) from None


def _no_smtputf8(where: str, env_from: WireAddress, env_to: list[WireAddress], recipients: list[str],
                 message_id: str) -> PermanentSendError:
    """The refusal, before MAIL FROM, of a message that needs SMTPUTF8 on a server without it (RFC 6531 §3.2).

    There is no ASCII form of a non-ASCII local part to fall back on (RFC
    6530 §4), so this message alone fails, naming the address; it is about
    the recipient unless our own sender address is the non-ASCII one.
    """
    about, rcpt = About.RECIPIENT, recipients[0]
    if env_from.needs_smtputf8:
        what, about = f"our sender address {env_from.address!r} has a non-ASCII local part", About.SENDER
    elif any(w.needs_smtputf8 for w in env_to):
        rcpt = next(r for w, r in zip(env_to, recipients, strict=True) if w.needs_smtputf8)
        what = f"the address {rcpt!r} has a non-ASCII local part"
    else:
        what = "a header carries an address with a non-ASCII local part (UTF-8 headers, RFC 6532)"
    return PermanentSendError(
        f"{where}: message {message_id} not sent: {what}, which needs the SMTPUTF8 extension "
        "(RFC 6531), and this server does not offer it", about=about,
        recipient=None if about is About.SENDER else rcpt,
        hint="ask the customer for an ASCII address, or send through a server that offers SMTPUTF8 "
             "(e.g. Postfix with smtputf8_enable = yes)")


def _utf8_head(message: bytes) -> bool:
    """Whether the header section carries raw UTF-8 (RFC 6532), which only SMTPUTF8 may transport.

    One C-speed ``isascii`` over the whole message decides the usual case.
    """
    if message.isascii():
        return False
    end = _HEAD_END.search(message)
    return not message[:end.start() if end else len(message)].isascii()


def _error(reading: Reading, code: int, text: str, recipient: str | None) -> CrmError:
    """The exception for a refusal read by :func:`read_answer` (the send pass decides by its type and ``about``)."""
    if reading.action is Action.QUOTA:
        return QuotaExceededError(f"the server refuses more mail for now (a sending quota): {text}",
                                  hint="the queue waits an hour; lower max_per_day / max_per_minute")
    rcpt = recipient if reading.about is not About.SENDER else None
    if reading.action is Action.RETRY:
        hint = ("the server asks to try this recipient later; this send waits, growing the delay, and the rest "
                "of the queue goes on" if reading.about is not About.SENDER
                else "the server asks to try later; the send stays queued")
        return TransientSendError(text, code=code, enhanced=reading.enhanced, about=reading.about, hint=hint)
    full = "the recipient's mailbox is full: logged as a soft bounce for that address"
    return PermanentSendError(text, code=code, enhanced=reading.enhanced, about=reading.about, recipient=rcpt,
                              hint=full if reading.about is About.MAILBOX_FULL else None)


# ---------------------------------------------------------------- reading an answer (pure)


class Stage(enum.StrEnum):
    """Where in the transaction an answer came (RFC 5321 §3.3): the first thing that says what it is about."""

    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"
    DATA = "DATA"  # the DATA command, before any content
    CONTENT = "end of DATA"  # the verdict on the content


class Action(enum.StrEnum):
    """What the send pass does with an answer."""

    RETRY = "retry"  # TransientSendError
    FAIL = "fail"  # PermanentSendError
    QUOTA = "quota"  # QuotaExceededError: a sending quota; the queue waits
    RECONNECT = "reconnect"  # 421 before the content: the server is closing; reconnect once, then stop


@dataclass(frozen=True, slots=True)
class Reading:
    """One answer read: what to do, what it is about, and the RFC 3463 code it was read from."""

    action: Action
    about: About
    enhanced: str | None = None


_ENHANCED = re.compile(rb"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# Providers that answer an unknown mailbox with a bare 550 say so in words (Postfix "User unknown in
# virtual mailbox table", Exchange "RecipientNotFound", QQ/163 "用户不存在" / "Mailbox not found").
_USER_UNKNOWN = re.compile(rb"user unknown|unknown user|no such user|recipient ?not ?found|mailbox not found|"
                           rb"mailbox unavailable|does not exist|invalid recipient|address rejected: user|"
                           + "用户不存在".encode(), re.IGNORECASE)
# A full mailbox in words, for answers without an enhanced code ("552 Mailbox full", "over quota",
# QQ/163 "邮箱已满" / "空间不足"). Checked before the quota words: "over quota" is the recipient's quota.
_MAILBOX_FULL = re.compile(rb"mailbox (is )?full|mailbox.{0,30}(over|exceed|quota|storage|space)|over ?quota|"
                           rb"(disk|storage|space) quota|insufficient (system )?storage|exceeded storage|"
                           rb"user.{0,20}quota|" + "邮箱已满|邮箱空间|邮箱容量|空间不足|容量不足".encode(),
                           re.IGNORECASE)
# The providers' known sending-quota answers, which come with a permanent code (Gmail "550 5.4.5 Daily user
# sending quota exceeded", Microsoft "554 5.2.0 ...SubmissionQuotaExceededException", QQ/163 "...发送频率过高",
# Alibaba Mail "554 Reject by behaviour spam ... too frequently sending", "...超过..."): read from the
# server's reply only, never from our own message text, and only where the enhanced code leaves it open.
_QUOTA_WORDS = re.compile(rb"quota|rate.?limit|too many|too frequent|sending limit|SubmissionQuotaExceeded|"
                          + "超过|频率".encode(), re.IGNORECASE)
# Microsoft's submission quota comes as 5.2.0 or, from some tenants, 5.2.2: its token names our account.
_SUBMISSION_QUOTA = re.compile(rb"SubmissionQuotaExceeded", re.IGNORECASE)
# Words of a RCPT-stage refusal that is about us: Postfix applies client, HELO and sender restrictions at
# RCPT (smtpd_delay_reject = yes), so "Sender address rejected", "Client host rejected ... blocked using"
# and "Relay access denied" arrive there with 5.7.1 like a recipient's policy.
_ABOUT_US = re.compile(rb"sender address|relay|client host|helo|authenticat|not logged in|blocked using|"
                       rb"spamhaus|your ip|ip address|reputation|\bspf\b|dkim|dmarc|reverse dns|\bptr\b",
                       re.IGNORECASE)
# RFC 3463 / RFC 7372 X.7.x details that concern the recipient (X.7.1 "delivery not authorized" as a
# recipient's policy, X.7.2 list expansion, X.7.17/18 owner changed, X.7.19 RRVS); every other security
# detail names our side: authentication (X.7.8-X.7.14), DKIM/SPF/DMARC/reverse DNS (X.7.20-X.7.27).
_RECIPIENT_POLICY = frozenset({0, 1, 2, 17, 18, 19})


def enhanced_status(resp: bytes) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply's text (``5.1.1``), if any."""
    m = _ENHANCED.search(resp[:40])
    return m.group(0).decode("ascii") if m else None


def read_answer(code: int, resp: bytes, stage: Stage) -> Reading:
    """What a 4xx/5xx answer means, from its enhanced code and stage first, its words last (issue #17).

    RFC 3463's enhanced code names the subject of the failure (X.1 address,
    X.2 mailbox, X.3 mail system, X.4 network, X.5 protocol, X.6 content, X.7
    security) and the stage names whose it is: at MAIL FROM everything is
    about our sender; at RCPT about that one recipient unless the code or
    Postfix's fixed wording says it is about us. Words decide only where the
    code leaves it open (no enhanced code, an ``X.Y.0`` "other" detail, a
    generic X.7.1). So ``552 5.2.2 mailbox full; quota exceeded`` for one
    recipient is that mailbox (a soft bounce), never a sending quota; ``452
    4.2.2`` too; and a ``421`` at RCPT backs off that recipient instead of
    counting as "server gone".
    """
    enhanced = enhanced_status(resp)
    subject = detail = None
    if enhanced is not None:
        _, sub, det = enhanced.split(".")
        subject, detail = int(sub), int(det)
    if code == _SERVER_GONE and stage in (Stage.MAIL, Stage.DATA):
        return Reading(Action.RECONNECT, About.SENDER, enhanced)
    about = _about(code, subject, detail, stage, resp)
    if about is About.MAILBOX_FULL:
        return Reading(Action.FAIL, about, enhanced)  # 452 4.2.2 as well: the message is lost either way
    if code < 500:
        if about is not About.SENDER and not (subject in (None, 0, 7) and _quota_words(resp)):
            return Reading(Action.RETRY, About.RECIPIENT, enhanced)
        return Reading(Action.RETRY, About.SENDER, enhanced)
    if _SUBMISSION_QUOTA.search(resp) or (subject, detail) == (4, 5):
        return Reading(Action.QUOTA, About.SENDER, enhanced)
    if about is not About.RECIPIENT_UNKNOWN and (subject is None or detail == 0 or subject == 7) \
            and _quota_words(resp):
        return Reading(Action.QUOTA, About.SENDER, enhanced)
    return Reading(Action.FAIL, about, enhanced)


def _quota_words(resp: bytes) -> bool:
    return bool(_QUOTA_WORDS.search(resp)) and not _MAILBOX_FULL.search(resp)


def _about(code: int, subject: int | None, detail: int | None, stage: Stage, resp: bytes) -> About:
    """Whose answer it is (see :func:`read_answer`); RFC 3463 subjects by number."""
    if subject == 1 and detail in (7, 8):
        return About.SENDER  # X.1.7 / X.1.8: bad *sender's* mailbox or system address
    if stage is Stage.MAIL:
        return About.SENDER
    if subject == 2 and detail == 2 and not _SUBMISSION_QUOTA.search(resp):
        return About.MAILBOX_FULL  # X.2.2 "mailbox full", whatever the basic code
    if subject in (3, 5):
        return About.SENDER  # the mail system, or our client's protocol
    if stage is Stage.RCPT:
        if subject == 1:
            return About.RECIPIENT_UNKNOWN
        if subject == 7:
            if detail in _RECIPIENT_POLICY and not (detail in (0, 1) and _ABOUT_US.search(resp)):
                return About.RECIPIENT
            return About.SENDER
        if subject is not None and not (detail == 0 and _quota_words(resp)):
            return About.RECIPIENT  # X.2.x mailbox, X.4.x route to that domain, X.6.7 non-ASCII address
        if _MAILBOX_FULL.search(resp):
            return About.MAILBOX_FULL
        if _ABOUT_US.search(resp) or _quota_words(resp):
            return About.SENDER
        if code == 552:
            return About.MAILBOX_FULL  # RFC 5321 §4.2.2: "exceeded storage allocation", said of this recipient
        if code == 550 and _USER_UNKNOWN.search(resp):
            return About.RECIPIENT_UNKNOWN
        return About.RECIPIENT
    if stage is Stage.CONTENT:  # one recipient a message: a mailbox answer after the content is that recipient's
        if subject == 1:
            return About.RECIPIENT_UNKNOWN
        if subject == 2 and not _SUBMISSION_QUOTA.search(resp):
            return About.RECIPIENT
        if subject is None and _MAILBOX_FULL.search(resp):
            return About.MAILBOX_FULL
    return About.SENDER
