"""A local Maildir as the mailbox (tests, the sample workspace, or mail delivered by another tool).

Maildir has no UIDs, and file times are no cursor: a message moved back
from Junk keeps its old time, a backup restored with ``cp -p`` too, and a
busy MTA (Postfix's virtual delivery agent) sets a file's time when it
finishes writing but links it into ``new/`` up to tens of milliseconds
later, after a time-based cursor may have passed it (issue #9 measured 7 of
4,001 messages lost that way). So the cursor is the set of files already
logged, by *base name* — the part before ``:2,`` that mail clients keep
when they move a message from ``new/`` to ``cur/`` and flag it (the
Maildir specification's unique name). One directory scan per folder finds
every file not yet logged, whatever its time; the worker records each
name in the transaction that logs the message (``RawMessage.seen_key``).
The "UID" reported is the file's modification time in nanoseconds, kept
only for ordering and the log's ``mailbox_state``. Reading never renames,
flags or deletes a file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from crm_automation.config import Config
from crm_automation.errors import ServiceError
from crm_automation.mailbox.base import Cursor
from crm_automation.models import RawMessage

log = logging.getLogger("crm_automation")
UIDVALIDITY = 1
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(<?[^\s>]+>?)", re.IGNORECASE | re.MULTILINE)


def base_name(file_name: str) -> str:
    """A Maildir file's unique part: its name without the ``:2,FLAGS`` info suffix."""
    return file_name.partition(":")[0]


def printable_name(file_name: str) -> str:
    r"""A file name as text that UTF-8 can hold: itself, or with its undecodable bytes escaped (``\xff``).

    Why (issue #17): a Maildir file name is bytes, and ``os.scandir`` hands
    bytes that are not UTF-8 over as lone surrogates (PEP 383). Such a name
    cannot be written to SQLite (``UnicodeEncodeError``, which rolled back
    the whole fetch batch) nor printed in a log line. Escaped, it is still
    the real name to a reader (``1700000000.M1P1.host\xff,S=10``) and the
    same name at every scan, so it serves as the cursor's key too. Only a
    file whose real name holds a literal backslash and ``x`` could be
    mistaken for an escaped one, and MTAs write unique names of letters,
    digits, dots, commas, ``=`` and ``_``.
    """
    if file_name.isascii():
        return file_name
    try:
        file_name.encode("utf-8")
    except UnicodeEncodeError:
        return file_name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return file_name


class MaildirSource:
    """Reads ``<path>/new`` and ``<path>/cur`` (and ``<path>/.<Folder>`` for other folders)."""

    tracks_names = True

    def __init__(self, path: Path, folders: list[str] | tuple[str, ...] = ("INBOX",),
                 max_bytes: int = 25 * 1024 * 1024, sent: str | None = None) -> None:
        self.path = path
        self._folders = list(folders)
        self.max_bytes = max_bytes
        self.sent = sent
        self.name = f"maildir {path}"

    @classmethod
    def from_config(cls, cfg: Config) -> MaildirSource:
        """The folder named by ``[mailbox] path``; the Sent folder is ``[outbound] sent_folder``."""
        assert cfg.mailbox.path is not None  # noqa: S101 - config.py guarantees it
        return cls(cfg.resolve(cfg.mailbox.path), cfg.mailbox.folders, cfg.mailbox.max_message_bytes,
                   cfg.outbound.sent_folder)

    def sent_folder(self) -> str | None:
        """``[outbound] sent_folder`` when that Maildir folder exists (a Maildir marks no folder as Sent)."""
        if self.sent is None:
            return None
        d = self._dir(self.sent)
        if (d / "new").is_dir() or (d / "cur").is_dir():
            return self.sent
        log.warning("%s: outbound.sent_folder %r is not a Maildir folder; the team's replies are not read", d,
                    self.sent)
        return None

    def _dir(self, folder: str) -> Path:
        """INBOX is the Maildir itself; ``CRM/Leads`` is ``.CRM.Leads`` (Maildir++, as Dovecot and Courier write)."""
        return self.path if folder.upper() == "INBOX" else self.path / ("." + folder.replace("/", "."))

    def _require(self, folder: str) -> Path:
        d = self._dir(folder)
        if not (d / "new").is_dir() and not (d / "cur").is_dir():
            raise ServiceError(f"{d}: not a Maildir (expected the folders new/ and cur/ inside it)",
                               hint="check [mailbox] path and folders in config.toml (relative paths start at the "
                                    "config's folder)")
        return d

    def folders(self) -> list[str]:
        """The configured folders."""
        return list(self._folders)

    def uidvalidity(self, folder: str) -> int:
        """Always 1: the cursor is a set of names, which never needs resetting."""
        self._require(folder)
        return UIDVALIDITY

    def fetch(self, folder: str, cursor: Cursor | None, *, batch: int = 500) -> Iterator[RawMessage]:
        """Every message whose base name is not in ``cursor.seen``, oldest file time first."""
        d = self._require(folder)  # a mistyped folder is an error, never "no new mail" forever
        seen = cursor.seen if cursor is not None else frozenset()
        entries: list[tuple[int, str, Path, int, str]] = []
        names: set[str] = set()  # a message moved from new/ to cur/ during the scan is read once
        for sub in ("new", "cur"):
            try:
                it = os.scandir(d / sub)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ServiceError(f"{d / sub}: cannot read the Maildir folder: {e.strerror}",
                                   hint="check that the user running crm-automation may read it") from None
            with it:
                for entry in it:
                    key = printable_name(base_name(entry.name))
                    if entry.name.startswith(".") or key in seen or key in names:
                        continue
                    try:
                        if not entry.is_file():
                            continue
                        st = entry.stat()
                    except FileNotFoundError:  # moved by a mail client meanwhile; seen at the next scan
                        continue
                    names.add(key)
                    entries.append((st.st_mtime_ns, entry.name, Path(entry.path), st.st_size, sub))
        entries.sort()
        for mt, name, p, size, sub in entries:
            try:
                with p.open("rb") as f:
                    raw = f.read(self.max_bytes + 1)
            except FileNotFoundError:  # moved by a mail client meanwhile; seen again under its new name
                continue
            except OSError as e:
                raise ServiceError(f"{p}: cannot read the message: {e.strerror}",
                                   hint="check that the user running crm-automation may read the Maildir") from None
            # ref names the file where a person finds it (a quarantined message's source, issue #17)
            yield RawMessage(folder=folder, uid=mt, uidvalidity=UIDVALIDITY, raw=raw,
                             ref=f"{sub}/{printable_name(name)}", seen_key=printable_name(base_name(name)),
                             size=size if size > self.max_bytes else None)

    def find_message_ids(self, folder: str, message_ids: list[str]) -> set[str]:
        """Which of ``message_ids`` are in ``folder`` (a Sent folder kept as a Maildir); read headers only."""
        wanted = {m.strip().strip("<>").lower(): m for m in message_ids if m and m.strip().strip("<>")}
        if not wanted:
            return set()
        found: set[str] = set()
        d = self._dir(folder)
        for sub in ("new", "cur"):
            try:
                names = [e.path for e in os.scandir(d / sub) if not e.name.startswith(".")]
            except OSError:
                continue
            for path in names:
                try:
                    with Path(path).open("rb") as f:
                        head = f.read(65536).split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
                except OSError:
                    continue
                m = _MESSAGE_ID.search(head)
                if m is not None:
                    got = m.group(1).decode("ascii", "replace").strip().strip("<>").lower()
                    if got in wanted:
                        found.add(wanted[got])
        return found

    def mark_processed(self, messages: list[RawMessage]) -> None:
        """Maildir messages stay where they are."""

    def close(self) -> None:
        """Nothing to release."""
