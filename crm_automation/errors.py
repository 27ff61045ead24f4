"""The exception tree, grouped by what the caller does next.

Modelled on imapclient's small tree and the Meltano Singer SDK's split into
fatal, skippable and retriable errors. Every message is written for the user:
where, what, what was found, what was expected. ``hint`` holds the next step.
Only :mod:`crm_automation.cli` turns these into exit codes.
"""

from __future__ import annotations

import enum


class CrmError(Exception):
    """Root of every error this package raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(CrmError):
    """Config, mapping, template or command-line misuse: nothing was done (exit 2).

    ``problems`` holds every problem found, so one run reports them all.
    """

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None, hint: str | None = None) -> None:
        self.problems = problems or [message]
        super().__init__(message, hint=hint)

    @classmethod
    def collect(cls, problems: list[str], *, hint: str | None = None) -> ConfigError:
        """Build one error out of several problem lines."""
        if len(problems) == 1:
            return cls(problems[0], problems=problems, hint=hint)
        text = f"{len(problems)} configuration problems:\n" + "\n".join(f"  - {p}" for p in problems)
        return cls(text, problems=problems, hint=hint)


class DataError(CrmError):
    """One item is bad (a row, a template render, a recipient refused with 5xx).

    The item is recorded and skipped; the rest of the work carries on (exit 1).
    """

    exit_code = 1


class ServiceError(CrmError):
    """A sheet, mailbox or SMTP server is unreachable, refuses the login, or fails for now.

    The stage stops and the next pass retries (exit 3).
    """

    exit_code = 3


class About(enum.StrEnum):
    """What a server's refusal is about, decided by the transport that read it (issue #17 item 7).

    The send pass acts on this value and never on the server's words:

    * ``recipient_unknown``: the address does not exist (RFC 3463 X.1.x at RCPT):
      a hard bounce for that address;
    * ``mailbox_full``: that mailbox is full or over its quota (X.2.2): a soft
      bounce for that address, counted in the soft-bounce score;
    * ``recipient``: anything else about this one recipient or an address this
      message carries (a per-recipient policy, a disabled mailbox, greylisting
      at RCPT, an address the server cannot carry without SMTPUTF8);
    * ``sender``: our account, sender address, connection, the server itself,
      or the message as a whole (MAIL FROM refusals, 5.7.x authentication and
      sender policy, 5.3.x system): the only answers the 5xx circuit breaker
      counts, because the next message would meet the same answer.
    """

    RECIPIENT_UNKNOWN = "recipient_unknown"
    MAILBOX_FULL = "mailbox_full"
    RECIPIENT = "recipient"
    SENDER = "sender"


class TransientSendError(ServiceError):
    """An SMTP 4xx answer for one message: retried on a later pass.

    ``about`` says whom it concerns: one recipient's 4xx (``About.RECIPIENT``)
    backs off that send alone and gives up after a while; one about the server
    or our account (``About.SENDER``) waits like any other try-later.
    """

    def __init__(self, message: str, *, code: int | None = None, hint: str | None = None,
                 enhanced: str | None = None, about: About = About.SENDER) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.enhanced = enhanced
        self.about = about


class PermanentSendError(DataError):
    """An answer that fails this send: it is marked ``failed``.

    Mostly a 5xx; also a 4xx that says this mailbox is full (``452 4.2.2``:
    the message is lost either way, issue #17), and an address the server
    cannot carry. ``about`` (:class:`About`) says what the answer is about and
    ``recipient`` names the address it concerns, both decided by the transport
    that read the answer: an unknown recipient is a hard bounce (issue #11), a
    full mailbox a soft bounce, and only ``About.SENDER`` counts towards the
    5xx circuit breaker.
    """

    def __init__(self, message: str, *, code: int | None = None, hint: str | None = None,
                 enhanced: str | None = None, about: About = About.SENDER, recipient: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code
        self.enhanced = enhanced
        self.about = about
        self.recipient = recipient


class QuotaExceededError(ServiceError):
    """The provider refuses more mail for now: a sending quota (Gmail 5.4.5, Microsoft SubmissionQuotaExceeded).

    Providers answer a quota with a *permanent* code; failing the whole queue
    for it would be wrong, so the send waits an hour and the pass stops.
    Raised by the transport that read the answer (it knows the providers'
    words), so the send pass decides by type, not by text.
    """


class MessageError(DataError):
    """An inbound message that cannot be understood; it goes to quarantine whole."""


class LockedError(ConfigError):
    """Another worker holds the workspace lock, or the log stayed busy past the wait (exit 2: nothing was done)."""


class LogBusyError(ServiceError):
    """The log stayed locked by another writer for longer than the busy timeout (SQLite ``SQLITE_BUSY``).

    A worker meets it as a service failure of this pass (exit 3, the next
    pass tries again); a short write of the application layer turns it into
    a :class:`LockedError` saying nothing was changed (issue #19).
    """


class LogConflictError(LogBusyError):
    """Another transaction and ours waited for each other (PostgreSQL: deadlock or serialization failure).

    The server rolled ours back whole, so the unit can simply be run again
    (issue #20: two workers writing the same rows in different orders, as
    the same message fetched from two folders at once).
    """


class StorageError(ServiceError):
    """The activity log (or another file the worker writes) cannot be written: disk full, read-only, no permission.

    Environmental, not a bug and not a configuration mistake: the message
    names the path and what to do; whatever was being written was rolled back
    (SQLite transactions, files written to a temporary name and renamed), so
    nothing is half-written (exit 3).
    """

    @classmethod
    def from_os(cls, path: object, e: OSError, doing: str) -> CrmError:
        """The error for an ``OSError`` met while ``doing`` something with ``path``, by its errno.

        A missing folder is the admin's path to fix (ConfigError, exit 2);
        a full or read-only disk and a permission problem are the
        environment (StorageError, exit 3).
        """
        import errno

        reason = e.strerror or str(e)
        if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
            return cls(f"{path}: the disk is full while {doing}", hint="free space on that disk and run again; "
                       "nothing was half-written")
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return cls(f"{path}: {reason} while {doing}",
                       hint="make the file and its folder writable by the user running crm-automation")
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return ConfigError(f"{path}: the folder does not exist ({reason}) while {doing}",
                               hint="create the folder first, or give a path in an existing folder")
        if e.errno == errno.EISDIR:
            return ConfigError(f"{path}: is a folder, expected a file name, while {doing}")
        return cls(f"{path}: {reason} while {doing}")


class UncertainSendError(ServiceError):
    """The connection broke after the message data was handed over: delivery unknown.

    The server had not confirmed it yet: the message may or may not have been delivered. The
    send is marked ``uncertain`` and never silently repeated (SPEC §10).
    """
