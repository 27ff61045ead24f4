"""The fast path of an IMAP fetch: new UIDs, sizes, batches, and bodies read without imapclient's parser.

Why its own module (issue #18): it is where a fetch spends its time (issues
#4 and #13, ``benchmarks/bench_fetch.py``), and it has rules of its own:

* **Incremental by UID.** The cursor is the folder's UIDVALIDITY plus the last
  UID logged (RFC 3501 §2.3.1.1). When UIDVALIDITY changes (the folder was
  recreated or the server rebuilt its index) every message is yielded again and
  the worker drops the ones already logged by Message-ID.
* **``UID SEARCH n:*`` quirk.** ``n:*`` means "n up to the highest UID", and a
  server must return the highest message even when n is above it (RFC 3501
  §6.4.8), so every UID list is filtered to ``>= n``. A poll first compares
  the cursor with UIDNEXT and issues no search at all when nothing is new.
* **Size bound.** One ``SEARCH LARGER`` names the large messages and only
  their RFC822.SIZE is read, before any body. A message above
  ``max_message_bytes`` is still yielded (the cursor must pass it and the
  worker must record it), but with only its first ``max_message_bytes + 1``
  bytes (a partial ``BODY.PEEK[]<0.N>``): one byte over the limit, so the
  parser's size check refuses it and the worker quarantines that prefix, while
  the whole message stays untouched in the mailbox. Batches are also cut by
  total size so a run of large messages cannot exhaust memory.
* **Nothing is marked read**: bodies are fetched with ``BODY.PEEK[]`` from a
  folder opened with EXAMINE.
"""

from __future__ import annotations

import imaplib
import logging
import re
from collections.abc import Iterator

from imapclient.exceptions import IMAPClientError  # noqa: TID251 - the IMAP adapter (mailbox/imap*.py)
from imapclient.response_parser import parse_fetch_response  # noqa: TID251

from crm_automation.errors import ServiceError
from crm_automation.mailbox.base import Cursor
from crm_automation.mailbox.imap_conn import ImapConnection, _Client, uidvalidity_of
from crm_automation.models import RawMessage

log = logging.getLogger("crm_automation.mailbox.imap")  # the adapter's one logger, whichever module logs
_IMAPLIB_TRACE = logging.getLogger("imapclient.imaplib")  # where imapclient sends imaplib's protocol trace

#: Upper bound of one batch's bodies in memory, whatever ``batch_size`` says.
MAX_BATCH_BYTES = 64 * 1024 * 1024
#: UIDs per ``UID SEARCH`` window (keeps each answer line under imaplib's 1 MB limit).
SEARCH_WINDOW = 50_000


# One message of a ``UID FETCH ... (BODY.PEEK[])`` answer as imaplib splits it: this line, then the
# literal, then ``)``. Dovecot, Gmail, Exchange and Coremail answer in exactly this shape.
_BODY_LINE = re.compile(rb"\d+ \(UID (\d+) BODY\[\] \{(\d+)\}")


def plain_bodies(data: list[object]) -> dict[int, bytes] | None:
    """UID -> body from an answer in the plain shape above, or None for anything else.

    Why not imapclient's parser (issue #13): it reads every answer a
    character at a time in Python, 40% of a large fetch's time in this
    process. Anything else — unsolicited FETCH lines, other items beside
    the body, a body sent as a quoted string or NIL — returns None and
    the caller lets imapclient parse the very same answer.
    """
    out: dict[int, bytes] = {}
    for item in data:
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], bytes) or not isinstance(item[1], bytes):
                return None
            m = _BODY_LINE.fullmatch(item[0])
            if m is None or int(m[2]) != len(item[1]):
                return None
            out[int(m[1])] = item[1]
        elif item != b")":
            return None
    return out


def whole_bodies(client: _Client, uids: list[int]) -> dict[int, bytes]:
    """The bodies of ``uids`` (``BODY.PEEK[]``: marks nothing read), as ``client.fetch`` would give them."""
    imap = getattr(client, "_imap", None)
    if not isinstance(imap, imaplib.IMAP4):  # not imapclient's usual client: ask it
        got = client.fetch(uids, ["BODY.PEEK[]"])
        return {uid: bytes(d[b"BODY[]"]) for uid, d in got.items() if b"BODY[]" in d}
    # imapclient switches imaplib's trace of every line on, into logging.debug: three calls a message,
    # a few percent of a large fetch (issue #13), for lines dropped unless that logger is at DEBUG.
    level = imap.debug
    if not _IMAPLIB_TRACE.isEnabledFor(logging.DEBUG):
        imap.debug = 0
    try:
        typ, data = imap.uid("FETCH", ",".join(map(str, uids)), "(BODY.PEEK[])")
    finally:
        imap.debug = level
    if typ != "OK":
        raise IMAPClientError(f"fetch failed: {data!r:.200}")
    bodies = plain_bodies(data)
    if bodies is None:
        parsed = parse_fetch_response(data, True, True)
        bodies = {uid: bytes(d[b"BODY[]"]) for uid, d in parsed.items()
                  if isinstance(uid, int) and b"BODY[]" in d}
    wanted = set(uids)
    return {uid: body for uid, body in bodies.items() if uid in wanted}  # unsolicited answers dropped


class FolderFetch:
    """One fetch of one folder after a cursor, over :class:`ImapConnection` (see the module docstring)."""

    def __init__(self, conn: ImapConnection, folder: str) -> None:
        self.conn = conn
        self.folder = folder
        self.where = conn.where
        self.max_bytes = conn.settings.max_message_bytes

    def messages(self, cursor: Cursor | None, size: int) -> Iterator[RawMessage]:
        """Yield the messages after ``cursor`` in UID order, ``size`` bodies per round trip.

        With no cursor, or a cursor from another UIDVALIDITY, the whole folder
        is yielded. Messages expunged by someone else meanwhile are skipped.
        """
        folder = self.folder
        info = self.conn._call(f"opening {folder!r}", lambda c: self.conn._select(c, folder, readonly=True))
        uv = uidvalidity_of(info)
        start = cursor.last_uid + 1 if cursor is not None and cursor.uidvalidity == uv else 1
        uidnext = info.get(b"UIDNEXT")
        if not info.get(b"EXISTS") or (isinstance(uidnext, int) and start >= uidnext):
            log.debug("%s %s: nothing after UID %s", self.where, folder, start - 1)
            return
        pending = self._new_uids(uv, start, uidnext if isinstance(uidnext, int) else None)
        log.info("%s %s: %d new message(s) after UID %d", self.where, folder, len(pending), start - 1)
        if not pending:
            return
        # One SEARCH LARGER names the few big messages; only their sizes are fetched. Every other
        # message is known to be at most `small` (and so under max_message_bytes), which bounds a
        # batch's memory without a size round trip per batch (that costs as much as the bodies in
        # imapclient's parser).
        small = max(1, min(MAX_BATCH_BYTES // size, self.max_bytes))
        sizes = self._large_sizes(uv, start, small)
        pos = 0
        while pos < len(pending):
            chunk = self._cut(pending[pos:pos + size], sizes, small)
            bodies = self._bodies(uv, chunk, sizes)
            for uid in chunk:
                raw = bodies.get(uid)
                if raw is None:
                    log.debug("%s %s: UID %s vanished before it was read", self.where, folder, uid)
                    continue
                big = sizes.get(uid, 0) > self.max_bytes
                yield RawMessage(folder=folder, uid=uid, uidvalidity=uv, raw=raw, ref=f"{uv}/{uid}",
                                 size=sizes[uid] if big else None)
            pos += len(chunk)

    def _check_uidvalidity(self, client: _Client, uv: int) -> None:
        info = self.conn._ensure_selected(client, self.folder)
        if info is not None and uidvalidity_of(info) != uv:
            raise ServiceError(
                f"{self.where}: UIDVALIDITY of {self.folder!r} changed during the fetch "
                f"({uv} -> {info[b'UIDVALIDITY']})",
                hint="the next pass re-reads the folder; messages already logged are recognised by Message-ID",
            )

    def _new_uids(self, uv: int, start: int, uidnext: int | None) -> list[int]:
        """Every UID from ``start`` on, searched in windows of :data:`SEARCH_WINDOW` UIDs.

        One ``SEARCH UID 1:*`` answer on a folder of a few hundred thousand
        messages is one line longer than imaplib accepts (1 MB), hence windows;
        the last one is open-ended so mail arriving meanwhile is not missed.
        """
        def op(c: _Client) -> list[int]:
            self._check_uidvalidity(c, uv)
            found: set[int] = set()
            lo = start
            while uidnext is not None and uidnext - lo > SEARCH_WINDOW:
                found.update(c.search(["UID", f"{lo}:{lo + SEARCH_WINDOW - 1}"]))
                lo += SEARCH_WINDOW
            found.update(c.search(["UID", f"{lo}:*"]))
            # "lo:*" also matches the highest UID when lo is above it: filter.
            return sorted(u for u in found if isinstance(u, int) and u >= start)

        return self.conn._call(f"listing new messages in {self.folder!r}", op)

    def _large_sizes(self, uv: int, start: int, threshold: int) -> dict[int, int]:
        """RFC822.SIZE of the messages above ``threshold`` bytes (searched after the UID list, so none is missed)."""
        def op(c: _Client) -> dict[int, int]:
            self._check_uidvalidity(c, uv)
            big = sorted(u for u in c.search(["UID", f"{start}:*", "LARGER", threshold])
                         if isinstance(u, int) and u >= start)
            sizes: dict[int, int] = {}
            for i in range(0, len(big), 500):
                for uid, d in c.fetch(big[i:i + 500], ["RFC822.SIZE"]).items():
                    sizes[uid] = int(d.get(b"RFC822.SIZE", 0))
            return sizes

        return self.conn._call(f"reading message sizes in {self.folder!r}", op)

    def _cut(self, uids: list[int], sizes: dict[int, int], small: int) -> list[int]:
        """The leading UIDs whose bodies fit :data:`MAX_BATCH_BYTES` (at least one).

        A UID without a size is one of the small messages (at most ``small`` bytes).
        """
        limit = self.max_bytes + 1
        chunk: list[int] = []
        total = 0
        for uid in uids:
            n = min(sizes.get(uid, small), limit)
            if chunk and total + n > MAX_BATCH_BYTES:
                break
            chunk.append(uid)
            total += n
        return chunk

    def _bodies(self, uv: int, chunk: list[int], sizes: dict[int, int]) -> dict[int, bytes]:
        limit = self.max_bytes
        whole = [u for u in chunk if sizes.get(u, 0) <= limit]
        cut = [u for u in chunk if sizes.get(u, 0) > limit]

        def op(c: _Client) -> dict[int, bytes]:
            self._check_uidvalidity(c, uv)
            out: dict[int, bytes] = {}
            if whole:
                out.update(whole_bodies(c, whole))
            if cut:
                for uid, d in c.fetch(cut, [f"BODY.PEEK[]<0.{limit + 1}>"]).items():
                    part = d.get(b"BODY[]<0>")
                    if part is not None:
                        log.warning("%s %s: UID %s is %d bytes, above max_message_bytes = %d; reading only the "
                                    "start (it will be quarantined)", self.where, self.folder, uid, sizes[uid], limit)
                        out[uid] = bytes(part)
            return out

        return self.conn._call(f"reading messages from {self.folder!r}", op)
