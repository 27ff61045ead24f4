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

Answers map onto the error tree by what the worker does next: 4xx is
:class:`~crm_automation.errors.TransientSendError` (retry on a later pass),
5xx is :class:`~crm_automation.errors.PermanentSendError` carrying the
server's own words (mark the send failed), and connection, TLS or login
failures are :class:`~crm_automation.errors.ServiceError` naming host:port and
user but never the secret.

Only this module imports smtplib (ruff TID251).
"""

from __future__ import annotations

import contextlib
import logging
import re
import smtplib  # noqa: TID251 - this is the one module allowed to use it
import socket
import ssl
from collections.abc import Callable
from email.utils import parseaddr
from typing import TYPE_CHECKING, Literal

from crm_automation.config import is_loopback
from crm_automation.credentials import Credentials, load_credentials
from crm_automation.errors import (
    ConfigError,
    PermanentSendError,
    QuotaExceededError,
    ServiceError,
    TransientSendError,
    UncertainSendError,
)

if TYPE_CHECKING:
    from types import TracebackType

    from crm_automation.config import Config

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


class SmtpTransport:
    """Sends messages over one SMTP connection that lives for a batch.

    Use as ``open()``, many ``send()``, ``close()`` (or as a context manager).
    ``send`` reconnects by itself when the connection was found closed before
    a message was handed over, so a worker that pauses between messages (rate
    limits) need not care about server idle timeouts.
    """

    name = "smtp"

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
        self.connections = 0
        """How many connections this transport opened (reconnects included); for reports and tests."""

    @classmethod
    def from_config(cls, cfg: Config) -> SmtpTransport:
        """Build the transport from ``[outbound]``; secrets are read at connect time, not here."""
        ob = cfg.outbound
        if not ob.host:
            raise ConfigError(f"{cfg.path}: outbound.host is required when outbound.transport = \"smtp\"")
        ca_file = str(cfg.resolve(ob.ca_file)) if ob.ca_file else None
        return cls(
            ob.host,
            ob.port,
            security=ob.security,
            credentials=lambda: load_credentials("outbound", ob),
            ca_file=ca_file,
            timeout=ob.timeout,
            allow_insecure=ob.allow_insecure,
        )

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
            self._quietly_close(smtp)
            raise
        except ssl.SSLError as e:
            self._quietly_close(smtp)
            raise self._fail("TLS failed", e, hint=tls_hint) from None
        except (smtplib.SMTPException, OSError) as e:
            self._quietly_close(smtp)
            raise self._fail("cannot connect", e, hint="check outbound.host, outbound.port and outbound.security; "
                             "is the server reachable from here?") from None
        try:
            if creds is not None and creds.username:
                self._login(smtp, creds)
        except ServiceError:
            self._quietly_close(smtp)
            raise
        self._smtp = smtp
        self._size_ok = smtp.has_extn("size")
        self.connections += 1
        log.info("connected to %s:%s (%s)%s", self.host, self.port, self.security,
                 f" as {self._user}" if self._user else "")
        return smtp

    def _login(self, smtp: smtplib.SMTP, creds: Credentials) -> None:
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
            raise self._fail("login refused", f"{e.smtp_code} {_text(e.smtp_error)}", hint=hint) from None
        except UnicodeEncodeError:
            raise self._fail("login failed", "the user name or secret contains non-ASCII characters, "
                             "which SMTP AUTH cannot carry here", hint=hint) from None
        except (smtplib.SMTPException, OSError) as e:
            raise self._fail("login failed", e, hint=hint) from None

    @staticmethod
    def _quietly_close(smtp: smtplib.SMTP | None) -> None:
        if smtp is not None:
            with contextlib.suppress(OSError):
                smtp.close()

    def _discard(self) -> None:
        """Forget a broken connection; the next send reconnects."""
        smtp, self._smtp = self._smtp, None
        self._quietly_close(smtp)

    def handed_over(self, message_ids: list[str]) -> set[str] | None:
        """An SMTP server cannot be asked what it received: None (recovery uses the Sent folder)."""
        return None

    def close(self) -> None:
        """Say QUIT and close; errors are ignored because nothing is pending."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            self._quietly_close(smtp)

    def __enter__(self) -> SmtpTransport:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- sending --------------------------------------------------------------------------------

    def send(self, message: bytes, *, sender: str, recipients: list[str], message_id: str) -> None:
        """Hand one message over; return only once the server accepted it with 2xx.

        Raises:
            TransientSendError: a 4xx answer; nothing was delivered, retry later.
            PermanentSendError: a 5xx answer (server's words in the message), or
                an address SMTP cannot carry; mark the send failed.
            UncertainSendError: the connection broke after the content was handed
                over; it may have been delivered; never resend silently.
            ServiceError: cannot (re)connect or log in; nothing was delivered.
        """
        if not recipients:
            raise PermanentSendError(f"message {message_id}: no recipients")
        for addr in (sender, *recipients):
            if "\r" in addr or "\n" in addr or not addr.isascii():
                raise PermanentSendError(
                    f"message {message_id}: envelope address {addr!r} contains a line break or non-ASCII "
                    f"characters (expected a plain address like name@example.com)"
                )
        data = frame_message(message)
        smtp = self._smtp or self._connect()
        try:
            self._begin(smtp, sender, recipients, len(data), message_id)
        except _Dropped as e:
            log.info("%s: connection was closed (%s); reconnecting", self.where, e)
            self._discard()
            smtp = self._connect()
            try:
                self._begin(smtp, sender, recipients, len(data), message_id)
            except _Dropped as e2:
                self._discard()
                raise self._fail(f"connection closed again before message {message_id} was handed over "
                                 f"(not sent)", str(e2)) from None
        self._finish(smtp, data, recipients, message_id)

    def _begin(self, smtp: smtplib.SMTP, sender: str, recipients: list[str], size: int, message_id: str) -> None:
        """MAIL, RCPT for every recipient, DATA until ``354``: nothing is delivered before this returns.

        All recipients or none: if any is refused the transaction is reset, so a
        retry never mails the accepted ones twice.
        """
        try:
            size_opt = f" SIZE={size}" if self._size_ok else ""
            code, resp = smtp.docmd("MAIL", f"FROM:<{_bare(sender)}>{size_opt}")
            if code != 250:
                self._refused(smtp, code, resp, f"MAIL FROM:<{sender}>", message_id)
            refused: list[tuple[str, int, bytes]] = []
            for rcpt in recipients:
                code, resp = smtp.docmd("RCPT", f"TO:<{_bare(rcpt)}>")
                if code not in (250, 251):
                    if code == _SERVER_GONE:
                        raise _Dropped(f"{code} {_text(resp)}")
                    refused.append((rcpt, code, resp))
            if refused:
                worst = max(refused, key=lambda r: r[1])
                self._refused(smtp, worst[1], worst[2], f"RCPT TO:<{worst[0]}>", message_id,
                              recipient=worst[0])
            code, resp = smtp.docmd("DATA")
        except smtplib.SMTPServerDisconnected as e:
            raise _Dropped(str(e)) from None
        except OSError as e:
            raise _Dropped(f"{type(e).__name__}: {e}") from None
        except smtplib.SMTPException as e:  # e.g. an over-long reply line: the server is not speaking SMTP
            self._discard()
            raise self._fail(f"protocol error before message {message_id} was handed over (not sent)", e) from None
        if code != 354:
            self._refused(smtp, code, resp, "DATA", message_id)

    def _refused(self, smtp: smtplib.SMTP, code: int, resp: bytes, stage: str, message_id: str,
                 recipient: str | None = None) -> None:
        """Turn a refusal before the content into the matching error (after RSET)."""
        if code == _SERVER_GONE:
            raise _Dropped(f"{code} {_text(resp)}")
        try:
            smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._discard()
        text = f"{self.where}: {stage} for message {message_id} answered {code} {_text(resp)}"
        if 400 <= code < 500:
            raise TransientSendError(text, code=code, hint="the server asks to try later; the send stays queued")
        if 500 <= code < 600:
            enhanced = enhanced_status(resp)
            if quota_answer(enhanced, resp):
                raise _quota_error(text)
            unknown = recipient if recipient is not None and recipient_unknown(code, enhanced, resp) else None
            raise PermanentSendError(text, code=code, enhanced=enhanced, unknown_recipient=unknown)
        self._discard()
        raise ServiceError(f"{text} (not an SMTP answer expected here; message not sent)")

    def _finish(self, smtp: smtplib.SMTP, data: bytes, recipients: list[str], message_id: str) -> None:
        """Send the content and read the verdict; a break here is uncertain, never retried."""
        try:
            smtp.send(data)
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
        text = f"{self.where}: the message {message_id} was refused after DATA with {code} {_text(resp)}"
        if code == _SERVER_GONE:
            self._discard()
        if 400 <= code < 500:
            raise TransientSendError(text, code=code, hint="the server asks to try later; the send stays queued")
        if 500 <= code < 600:
            enhanced = enhanced_status(resp)
            if quota_answer(enhanced, resp):
                raise _quota_error(text)
            raise PermanentSendError(text, code=code, enhanced=enhanced)
        self._discard()
        raise UncertainSendError(f"{text} (not an SMTP answer; it may have been delivered, so it is not sent again)")


_ENHANCED = re.compile(rb"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# Providers that answer an unknown mailbox with a bare 550 say so in words (Postfix "User unknown in
# virtual mailbox table", Exchange "RecipientNotFound", QQ/163 "用户不存在" / "Mailbox not found").
_USER_UNKNOWN = re.compile(rb"user unknown|unknown user|no such user|recipient ?not ?found|mailbox not found|"
                           rb"mailbox unavailable|does not exist|invalid recipient|address rejected: user|"
                           rb"\xe7\x94\xa8\xe6\x88\xb7\xe4\xb8\x8d\xe5\xad\x98\xe5\x9c\xa8", re.IGNORECASE)


def enhanced_status(resp: bytes) -> str | None:
    """The RFC 3463 enhanced status code at the start of a reply's text (``5.1.1``), if any."""
    m = _ENHANCED.search(resp[:40])
    return m.group(0).decode("ascii") if m else None


def recipient_unknown(code: int, enhanced: str | None, resp: bytes) -> bool:
    """Whether a RCPT refusal says the address does not exist: a hard bounce for it (issue #11).

    RFC 3463 §3.2: 5.1.x are addressing failures (5.1.1 bad mailbox, 5.1.2
    bad system, 5.1.10 null MX). Servers that send no enhanced code answer
    550 with words; 用户不存在 is matched as UTF-8 bytes.
    """
    if enhanced is not None:
        return enhanced.startswith("5.1.")
    return code == 550 and bool(_USER_UNKNOWN.search(resp))


# The providers' known quota answers, which come with a permanent code (Gmail "550 5.4.5 Daily user sending
# quota exceeded", Microsoft "554 5.2.0 ...SubmissionQuotaExceededException", QQ/163 "...发送频率过高",
# Alibaba Mail "554 Reject by behaviour spam ... too frequently sending",
# "...超过..."): read from the server's reply only, never from our own message text.
_QUOTA_WORDS = re.compile(rb"quota|rate.?limit|too many|too frequent|sending limit|SubmissionQuotaExceeded|"
                          rb"\xe8\xb6\x85\xe8\xbf\x87|\xe9\xa2\x91\xe7\x8e\x87", re.IGNORECASE)  # 超过, 频率


def quota_answer(enhanced: str | None, resp: bytes) -> bool:
    """Whether a 5xx answer is a sending quota rather than a refusal of this message (see :data:`_QUOTA_WORDS`)."""
    return enhanced == "5.4.5" or bool(_QUOTA_WORDS.search(resp))


def _quota_error(text: str) -> QuotaExceededError:
    return QuotaExceededError(f"the server refuses more mail for now (a sending quota): {text}",
                              hint="the queue waits an hour; lower max_per_day / max_per_minute")
