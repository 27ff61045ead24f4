"""An IMAP mailbox as the inbound source (SPEC §3 ``[mailbox]``, §9; issue #4).

The adapter is three modules (issue #18): the connection (TLS, login, one
transparent reconnect, folder names) in :mod:`.imap_conn`, the fast fetch
path (incremental by UID, size-bounded batches, bodies parsed without
imapclient's parser) in :mod:`.imap_fetch`, and here the ``MailboxSource``
itself: which folders, their UIDVALIDITY, moving logged messages, and
finding sent copies by Message-ID.

* **Nothing is marked read.** Folders are opened with EXAMINE (read-only) and
  bodies fetched with ``BODY.PEEK[]``; only :meth:`ImapSource.mark_processed`
  selects read-write, and only when ``processed_folder`` is set.
* **Errors name host:port and user, never the secret** (:mod:`.imap_conn`).

Only the mailbox/imap*.py modules import imapclient (ruff TID251).
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterator
from functools import partial
from itertools import groupby

import imapclient  # noqa: TID251 - the IMAP adapter (mailbox/imap*.py)
from imapclient.exceptions import IMAPClientError  # noqa: TID251
from imapclient.imapclient import SENT  # noqa: TID251 - b"\\Sent", the RFC 6154 flag

from crm_automation.config import Config
from crm_automation.mailbox.base import Cursor
from crm_automation.mailbox.imap_conn import ImapConnection, _Client, log, uidvalidity_of
from crm_automation.mailbox.imap_fetch import FolderFetch
from crm_automation.models import RawMessage

#: Message-IDs OR-ed into one ``UID SEARCH`` by :meth:`ImapSource.find_message_ids`.
SEARCH_CHUNK = 20
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def _norm_id(message_id: str) -> str:
    """``<a@b>``, `` a@b `` and ``<A@B>`` compare equal: servers and clients differ on brackets and case.

    The server's ``SEARCH HEADER`` ignores case too (RFC 3501 §6.4.4), so the
    confirmation must; our own ids are UUIDs, which case cannot confuse.
    """
    return message_id.strip().strip("<>").strip().lower()


class ImapSource(ImapConnection):
    """Reads configured IMAP folders incrementally; implements ``MailboxSource``.

    One connection is opened lazily and reused for every folder of a pass
    (:class:`~crm_automation.mailbox.imap_conn.ImapConnection`); :meth:`close`
    logs out.
    """

    @classmethod
    def from_config(cls, cfg: Config) -> ImapSource:
        """The mailbox described by ``[mailbox]`` (``ca_file`` relative to the config file)."""
        mb = cfg.mailbox
        ca = cfg.resolve(mb.ca_file) if mb.ca_file else None
        src = cls(mb, ca_file=ca)
        src.sent_name = cfg.outbound.sent_folder
        return src

    sent_name: str | None = None  # ``[outbound] sent_folder``; None: found by its special-use flag

    def sent_folder(self) -> str | None:
        r"""The Sent folder: ``sent_folder`` when it exists, else the one the server flags ``\Sent`` (RFC 6154).

        imapclient's ``find_special_folder`` reads the flags of ``LIST`` and,
        on a server without special-use (older Dovecot configs, some hosted
        Exchange), falls back to the usual names (``Sent``, ``Sent Items``,
        ``Sent Messages``). QQ Mail and 163.com flag theirs (``Sent Messages``,
        ``已发送``). A configured folder that does not exist is logged and read
        as none: the inbound folders are read all the same.
        """
        name = self.sent_name

        def op(c: _Client) -> str | None:
            if name is not None:
                if c.folder_exists(self._server_name(c, name)):
                    return name
                log.warning("%s: outbound.sent_folder %r does not exist; the team's replies are not read",
                            self.where, name)
                return None
            return c.find_special_folder(SENT)

        return self._call("looking for the Sent folder", op)

    # --------------------------------------------------------------- protocol
    def folders(self) -> list[str]:
        """The configured folders, in the configured order."""
        return list(self.settings.folders)

    def uidvalidity(self, folder: str) -> int:
        """The folder's current UIDVALIDITY, read by EXAMINE (marks nothing)."""
        info = self._call(f"opening {folder!r}", lambda c: self._select(c, folder, readonly=True))
        return uidvalidity_of(info)

    def fetch(self, folder: str, cursor: Cursor | None, *, batch: int | None = None) -> Iterator[RawMessage]:
        """Yield the messages after ``cursor`` in UID order, ``batch`` bodies per round trip.

        With no cursor, or a cursor from another UIDVALIDITY, the whole folder
        is yielded. Messages expunged by someone else meanwhile are skipped.
        The fast path is :class:`~crm_automation.mailbox.imap_fetch.FolderFetch`.
        """
        return FolderFetch(self, folder).messages(cursor, batch or self.settings.batch_size)

    def mark_processed(self, messages: list[RawMessage]) -> None:
        r"""Move logged messages to ``processed_folder`` (no-op when unset).

        MOVE (RFC 6851) where the server has it, else COPY + ``\Deleted`` +
        ``UID EXPUNGE`` of exactly those UIDs (RFC 4315 UIDPLUS), so other
        messages someone flagged ``\Deleted`` are never expunged. Without
        either the messages are only copied (and a warning logged). Messages
        from an older UIDVALIDITY are left where they are: their UIDs no longer
        name them.
        """
        dest = self.settings.processed_folder
        if not dest or not messages:
            return
        self._call(f"creating {dest!r}", self._ensure_processed_folder)
        ordered = sorted(messages, key=lambda m: m.folder)
        for folder, group in groupby(ordered, key=lambda m: m.folder):
            if folder == dest:
                continue
            msgs = list(group)
            self._call(f"moving {len(msgs)} message(s) from {folder!r} to {dest!r}",
                       partial(self._move, folder=folder, msgs=msgs, dest=dest))

    def _ensure_processed_folder(self, client: _Client) -> None:
        if self._processed_ready or not self.settings.processed_folder:
            return
        dest = self._server_name(client, self.settings.processed_folder)
        if not client.folder_exists(dest):
            try:
                client.create_folder(dest)
                log.info("%s: created folder %r", self.where, dest)
            except imaplib.IMAP4.abort:
                raise
            except IMAPClientError:
                if not client.folder_exists(dest):  # not a race with another client: a real failure
                    raise
        self._processed_ready = True

    def _move(self, client: _Client, folder: str, msgs: list[RawMessage], dest: str) -> None:
        info = self._select(client, folder, readonly=False)
        dest = self._server_name(client, dest)
        uv = uidvalidity_of(info)
        uids = [m.uid for m in msgs if m.uidvalidity == uv]
        if len(uids) < len(msgs):
            log.warning("%s %s: %d message(s) not moved: UIDVALIDITY changed since they were read",
                        self.where, folder, len(msgs) - len(uids))
        if not uids:
            return
        if client.has_capability("MOVE"):
            client.move(uids, dest)
        elif client.has_capability("UIDPLUS"):
            client.copy(uids, dest)
            client.add_flags(uids, [imapclient.DELETED], silent=True)
            client.uid_expunge(uids)
        else:
            client.copy(uids, dest)
            log.warning("%s: the server has neither MOVE nor UIDPLUS: %d message(s) copied to %r but left in %r "
                        "(expunging could remove other people's deleted messages)", self.where, len(uids), dest,
                        folder)
        log.debug("%s: moved %d message(s) from %r to %r", self.where, len(uids), folder, dest)

    def find_message_ids(self, folder: str, message_ids: list[str]) -> set[str]:
        """Which of ``message_ids`` are present in ``folder`` (e.g. the Sent folder after a crash).

        ``UID SEARCH HEADER Message-ID`` is a substring match, so candidates are
        confirmed by fetching their Message-ID header. Returns the ids as given.
        A missing folder holds nothing: an empty set, with a warning.
        """
        wanted: dict[str, str] = {}
        for mid in message_ids:
            if mid and _norm_id(mid):
                wanted.setdefault(_norm_id(mid), mid)
        if not wanted:
            return set()

        def op(c: _Client) -> set[str]:
            if not c.folder_exists(self._server_name(c, folder)):
                log.warning("%s: folder %r does not exist; no sent copies to look up", self.where, folder)
                return set()
            self._select(c, folder, readonly=True)
            ids = list(wanted)
            found: set[str] = set()
            for i in range(0, len(ids), SEARCH_CHUNK):
                part = ids[i:i + SEARCH_CHUNK]
                uids = [u for u in c.search(_or_criteria(part)) if isinstance(u, int)]
                if not uids:
                    continue
                for d in c.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]).values():
                    header = next((v for k, v in d.items() if k.startswith(b"BODY[HEADER")), b"")
                    m = _MESSAGE_ID.search(bytes(header or b""))
                    if m:
                        got = _norm_id(re.sub(rb"\s+", b"", m.group(1)).decode("ascii", "replace"))
                        if got in wanted:
                            found.add(wanted[got])
            return found

        return self._call(f"looking up Message-IDs in {folder!r}", op)


def _or_criteria(ids: list[str]) -> list[object]:
    """``OR (HEADER Message-ID a) (OR (HEADER Message-ID b) (...))`` for one search round trip."""
    crit: list[object] = ["HEADER", "Message-ID", ids[-1]]
    for mid in reversed(ids[:-1]):
        crit = ["OR", ["HEADER", "Message-ID", mid], crit]
    return crit
