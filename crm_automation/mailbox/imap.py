"""An IMAP mailbox as the inbound source (SPEC §3 ``[mailbox]``, §9; issue #4).

The only module that imports imapclient. Design choices, and why:

* **Incremental by UID.** The cursor is the folder's UIDVALIDITY plus the last
  UID logged (RFC 3501 §2.3.1.1). When UIDVALIDITY changes (the folder was
  recreated or the server rebuilt its index) every message is yielded again and
  the worker drops the ones already logged by Message-ID.
* **Nothing is marked read.** Folders are opened with EXAMINE (read-only) and
  bodies fetched with ``BODY.PEEK[]``; only :meth:`ImapSource.mark_processed`
  selects read-write, and only when ``processed_folder`` is set.
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
* **Folder names.** ``/`` is the hierarchy separator in the config (as mail
  clients show it); it is translated to the server's delimiter (``.`` on
  Dovecot's Maildir++), so ``CRM/Processed`` works everywhere.
* **One transparent reconnect.** A dropped connection (server restart, idle
  timeout, ``doveadm kick``) is reopened once and the fetch resumes after the
  last UID yielded; a second failure in a row raises :class:`ServiceError`.
* **Errors name host:port and user, never the secret.** imapclient's own
  DEBUG logging redacts LOGIN/AUTHENTICATE lines; messages built here are
  scrubbed of the password and token as well.
"""

from __future__ import annotations

import imaplib
import logging
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Protocol, TypeVar

import imapclient  # noqa: TID251 - this is the one module allowed to use it
from imapclient.exceptions import IMAPClientError, LoginError  # noqa: TID251
from imapclient.response_parser import parse_fetch_response  # noqa: TID251

from crm_automation.config import Config, MailboxSection
from crm_automation.credentials import Credentials, load_credentials
from crm_automation.errors import ConfigError, ServiceError
from crm_automation.mailbox.base import Cursor
from crm_automation.models import RawMessage

log = logging.getLogger(__name__)
_IMAPLIB_TRACE = logging.getLogger("imapclient.imaplib")  # where imapclient sends imaplib's protocol trace

T = TypeVar("T")

DEFAULT_PORTS = {"ssl": 993, "starttls": 143, "none": 143}
#: Upper bound of one batch's bodies in memory, whatever ``batch_size`` says.
MAX_BATCH_BYTES = 64 * 1024 * 1024
#: Message-IDs OR-ed into one ``UID SEARCH`` by :meth:`ImapSource.find_message_ids`.
SEARCH_CHUNK = 20
#: UIDs per ``UID SEARCH`` window (keeps each answer line under imaplib's 1 MB limit).
SEARCH_WINDOW = 50_000

# Errors that mean the connection is gone (worth one reconnect), as opposed to
# a server answering NO/BAD to a command.
_DROPPED: tuple[type[BaseException], ...] = (imaplib.IMAP4.abort, OSError, EOFError)
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


#: One ``LIST`` answer line as imapclient parses it: (flags, hierarchy delimiter or None, folder name).
_FolderEntry = tuple[tuple[bytes, ...], bytes | None, str]


class _Client(Protocol):
    """What this module uses of ``imapclient.IMAPClient``, typed (imapclient ships no type information).

    Answers not read here are ``object``. ``fetch`` is typed for the items
    fetched here: ``RFC822.SIZE`` is an int, ``BODY[...]`` bytes.
    """

    def has_capability(self, capability: str) -> bool: ...
    def capabilities(self) -> tuple[bytes, ...]: ...
    def starttls(self, ssl_context: ssl.SSLContext | None = None) -> object: ...
    def login(self, username: str, password: str) -> object: ...
    def oauth2_login(self, user: str, access_token: str) -> object: ...
    def id_(self, parameters: dict[str, str] | None = None) -> object: ...
    def list_folders(self, directory: str = "", pattern: str = "*") -> list[_FolderEntry]: ...
    # EXISTS, UIDNEXT and UIDVALIDITY are ints; other keys hold flags or raw answers
    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, object]: ...
    def folder_exists(self, folder: str) -> bool: ...
    def create_folder(self, folder: str) -> object: ...
    def search(self, criteria: Sequence[object]) -> list[int]: ...
    def fetch(self, messages: list[int], data: list[str]) -> dict[int, dict[bytes, bytes | int]]: ...
    def move(self, messages: list[int], folder: str) -> object: ...
    def copy(self, messages: list[int], folder: str) -> object: ...
    def add_flags(self, messages: list[int], flags: list[bytes], silent: bool = False) -> object: ...
    def uid_expunge(self, messages: list[int]) -> object: ...
    def logout(self) -> object: ...
    def shutdown(self) -> None: ...


def _uidvalidity(info: Mapping[bytes, object]) -> int:
    """UIDVALIDITY of a SELECT answer (imapclient parses it to an int)."""
    value = info[b"UIDVALIDITY"]
    if not isinstance(value, int):
        raise TypeError(f"UIDVALIDITY {value!r} is not a number")
    return value


def _norm_id(message_id: str) -> str:
    """``<a@b>``, `` a@b `` and ``<A@B>`` compare equal: servers and clients differ on brackets and case.

    The server's ``SEARCH HEADER`` ignores case too (RFC 3501 §6.4.4), so the
    confirmation must; our own ids are UUIDs, which case cannot confuse.
    """
    return message_id.strip().strip("<>").strip().lower()


# One message of a ``UID FETCH ... (BODY.PEEK[])`` answer as imaplib splits it: this line, then the
# literal, then ``)``. Dovecot, Gmail, Exchange and Coremail answer in exactly this shape.
_BODY_LINE = re.compile(rb"\d+ \(UID (\d+) BODY\[\] \{(\d+)\}")


def _plain_bodies(data: list[object]) -> dict[int, bytes] | None:
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


def _whole_bodies(client: _Client, uids: list[int]) -> dict[int, bytes]:
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
    bodies = _plain_bodies(data)
    if bodies is None:
        parsed = parse_fetch_response(data, True, True)
        bodies = {uid: bytes(d[b"BODY[]"]) for uid, d in parsed.items()
                  if isinstance(uid, int) and b"BODY[]" in d}
    wanted = set(uids)
    return {uid: body for uid, body in bodies.items() if uid in wanted}  # unsolicited answers dropped


class ImapSource:
    """Reads configured IMAP folders incrementally; implements ``MailboxSource``.

    One connection is opened lazily and reused for every folder of a pass;
    :meth:`close` logs out. Credentials are loaded at each (re)connect so a
    fresh OAuth2 token is fetched when the old connection is gone.
    """

    def __init__(
        self,
        settings: MailboxSection,
        *,
        ca_file: Path | None = None,
        section: str = "mailbox",
        credentials: Callable[[], Credentials] | None = None,
    ) -> None:
        if not settings.host:
            raise ConfigError(f"{section}.host is required for an IMAP mailbox (e.g. \"imap.example.com\")")
        if ca_file is not None and not ca_file.is_file():
            raise ConfigError(f"{section}.ca_file: {ca_file} does not exist (expected a PEM file of CA certificates)")
        self.settings = settings
        self.section = section
        self.host: str = settings.host
        self.port: int = settings.port or DEFAULT_PORTS[settings.security]
        self.ca_file = ca_file
        self.username = settings.username or ""
        self._credentials = credentials or (lambda: load_credentials(section, settings))
        self._secrets: list[str] = []
        self._client: _Client | None = None
        self._selected: tuple[str, bool] | None = None  # (folder, readonly)
        self._processed_ready = False
        self._delimiter: str | None = None
        self.name = f"imap://{self.username}@{self.host}" if self.username else f"imap://{self.host}"
        self.tracks_names = False  # the cursor is UIDVALIDITY + last UID

    @classmethod
    def from_config(cls, cfg: Config) -> ImapSource:
        """The mailbox described by ``[mailbox]`` (``ca_file`` relative to the config file)."""
        mb = cfg.mailbox
        ca = cfg.resolve(mb.ca_file) if mb.ca_file else None
        return cls(mb, ca_file=ca)

    # ------------------------------------------------------------ connection
    @property
    def where(self) -> str:
        """``host:port (user u)``, the prefix of every error message."""
        user = f" (user {self.username})" if self.username else ""
        return f"IMAP {self.host}:{self.port}{user}"

    def _scrub(self, text: str) -> str:
        for s in self._secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _tls_context(self) -> ssl.SSLContext:
        """Certificates and host names verified; ``ca_file`` (a company or test CA) replaces the system store."""
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def _open(self) -> _Client:
        sec = self.settings.security
        timeout = self.settings.timeout
        client: _Client
        try:
            if sec == "ssl":
                client = imapclient.IMAPClient(self.host, self.port, ssl=True, ssl_context=self._tls_context(),
                                               timeout=timeout)
            else:
                client = imapclient.IMAPClient(self.host, self.port, ssl=False, timeout=timeout)
                if sec == "starttls":
                    if not client.has_capability("STARTTLS"):
                        client.shutdown()
                        raise ServiceError(
                            f"{self.where}: the server does not offer STARTTLS (security = \"starttls\")",
                            hint="use security = \"ssl\" with port 993, which most providers offer",
                        )
                    client.starttls(self._tls_context())
        except ssl.SSLCertVerificationError as e:
            raise ServiceError(
                f"{self.where}: the server's TLS certificate is not trusted: {e.verify_message or e}",
                hint=f"if the server uses a company or test CA, set {self.section}.ca_file to its PEM file",
            ) from None
        except ssl.SSLError as e:
            raise ServiceError(f"{self.where}: TLS handshake failed: {e}",
                               hint="check the port: 993 is implicit TLS (\"ssl\"), 143 is \"starttls\"") from None
        except (OSError, EOFError, imaplib.IMAP4.error) as e:
            raise ServiceError(f"{self.where}: cannot connect: {type(e).__name__}: {e}",
                               hint="check host, port and network; the next pass retries") from None
        self._login(client)
        return client

    def _login(self, client: _Client) -> None:
        creds = self._credentials()
        if not creds.username:
            client.shutdown()
            raise ConfigError(f"{self.section}.username is required for an IMAP mailbox")
        self._secrets = [s for s in (creds.password, creds.token) if s]
        try:
            if creds.token:
                client.oauth2_login(creds.username, creds.token)
            else:
                client.login(creds.username, creds.password or "")
        except _DROPPED as e:
            raise ServiceError(f"{self.where}: connection lost during login: {self._scrub(str(e))}") from None
        except (LoginError, IMAPClientError) as e:
            with _quiet():
                client.shutdown()
            how = "XOAUTH2 token" if creds.token else "password"
            raise ServiceError(
                f"{self.where}: login refused ({how}): {self._scrub(str(e))}",
                hint=("check the token command's account and scopes" if creds.token
                      else f"check ${self.settings.password_env}; many providers need an app password for IMAP"),
            ) from None
        self._send_id(client)
        log.info("%s: logged in (%s)", self.where, self.settings.security)

    def _send_id(self, client: _Client) -> None:
        """Identify the client (RFC 2971) where the server offers ID.

        NetEase (163.com, 126.com) refuses SELECT with "Unsafe Login" until the
        client has sent ID; other servers just log it. A refusal is ignored.
        """
        try:
            if b"ID" in client.capabilities():
                client.id_({"name": "crm-automation", "version": "0.1"})
        except (IMAPClientError, *_DROPPED) as e:
            log.debug("%s: IMAP ID not accepted: %s", self.where, self._scrub(str(e)))

    def _conn(self) -> _Client:
        if self._client is None:
            self._client = self._open()
            self._selected = None
        return self._client

    def _drop(self) -> None:
        """Forget a broken connection without waiting on it."""
        if self._client is not None:
            with _quiet():
                self._client.shutdown()
        self._client = None
        self._selected = None

    def _call(self, what: str, op: Callable[[_Client], T]) -> T:
        """Run ``op`` on the connection, reconnecting once if the connection dropped."""
        for attempt in (1, 2):
            client = self._conn()
            try:
                return op(client)
            except _DROPPED as e:
                self._drop()
                if attempt == 2:
                    raise ServiceError(f"{self.where}: connection lost again while {what}: "
                                       f"{type(e).__name__}: {self._scrub(str(e))}") from None
                log.warning("%s: connection lost while %s (%s); reconnecting", self.where, what, type(e).__name__)
            except IMAPClientError as e:
                raise ServiceError(f"{self.where}: {what} failed: {self._scrub(str(e))}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _server_name(self, client: _Client, folder: str) -> str:
        """The server's name for a configured folder: ``/`` is the hierarchy separator in the config.

        Mail clients show ``CRM/Processed`` whatever the server's delimiter is;
        Dovecot's Maildir++ default is ``.`` and refuses ``/`` in a name, Gmail,
        Exchange, QQ and 163 use ``/``. The delimiter is read once (``LIST "" ""``).
        """
        if "/" not in folder:
            return folder
        if self._delimiter is None:
            listed = client.list_folders("", "")
            delim = listed[0][1] if listed and listed[0][1] else b"/"
            self._delimiter = delim.decode() if isinstance(delim, bytes) else str(delim)
        return folder if self._delimiter == "/" else folder.replace("/", self._delimiter)

    def _select(self, client: _Client, folder: str, *, readonly: bool) -> dict[bytes, object]:
        """SELECT/EXAMINE ``folder``; a missing folder is reported by name."""
        name = self._server_name(client, folder)
        try:
            info = client.select_folder(name, readonly=readonly)
        except imaplib.IMAP4.abort:
            raise  # the connection dropped: _call reconnects
        except IMAPClientError as e:
            if not client.folder_exists(name):
                names = ", ".join(sorted(str(f[2]) for f in client.list_folders()))
                raise ServiceError(f"{self.where}: folder {folder!r} does not exist (folders there: {names})",
                                   hint=f"fix {self.section}.folders, or create the folder") from None
            raise ServiceError(f"{self.where}: cannot open folder {folder!r}: {self._scrub(str(e))}") from None
        self._selected = (folder, readonly)
        return info

    def _ensure_selected(self, client: _Client, folder: str) -> dict[bytes, object] | None:
        """Select ``folder`` read-only unless it is already selected (in either mode)."""
        if self._selected is not None and self._selected[0] == folder:
            return None
        return self._select(client, folder, readonly=True)

    # --------------------------------------------------------------- protocol
    def folders(self) -> list[str]:
        """The configured folders, in the configured order."""
        return list(self.settings.folders)

    def uidvalidity(self, folder: str) -> int:
        """The folder's current UIDVALIDITY, read by EXAMINE (marks nothing)."""
        info = self._call(f"opening {folder!r}", lambda c: self._select(c, folder, readonly=True))
        return _uidvalidity(info)

    def fetch(self, folder: str, cursor: Cursor | None, *, batch: int | None = None) -> Iterator[RawMessage]:
        """Yield the messages after ``cursor`` in UID order, ``batch`` bodies per round trip.

        With no cursor, or a cursor from another UIDVALIDITY, the whole folder
        is yielded. Messages expunged by someone else meanwhile are skipped.
        """
        size = batch or self.settings.batch_size
        info = self._call(f"opening {folder!r}", lambda c: self._select(c, folder, readonly=True))
        uv = _uidvalidity(info)
        start = cursor.last_uid + 1 if cursor is not None and cursor.uidvalidity == uv else 1
        uidnext = info.get(b"UIDNEXT")
        if not info.get(b"EXISTS") or (isinstance(uidnext, int) and start >= uidnext):
            log.debug("%s %s: nothing after UID %s", self.where, folder, start - 1)
            return
        pending = self._new_uids(folder, uv, start, uidnext if isinstance(uidnext, int) else None)
        log.info("%s %s: %d new message(s) after UID %d", self.where, folder, len(pending), start - 1)
        if not pending:
            return
        # One SEARCH LARGER names the few big messages; only their sizes are fetched. Every other
        # message is known to be at most `small` (and so under max_message_bytes), which bounds a
        # batch's memory without a size round trip per batch (that costs as much as the bodies in
        # imapclient's parser).
        small = max(1, min(MAX_BATCH_BYTES // size, self.settings.max_message_bytes))
        sizes = self._large_sizes(folder, uv, start, small)
        pos = 0
        while pos < len(pending):
            chunk = self._cut(pending[pos:pos + size], sizes, small)
            bodies = self._bodies(folder, uv, chunk, sizes)
            for uid in chunk:
                raw = bodies.get(uid)
                if raw is None:
                    log.debug("%s %s: UID %s vanished before it was read", self.where, folder, uid)
                    continue
                big = sizes.get(uid, 0) > self.settings.max_message_bytes
                yield RawMessage(folder=folder, uid=uid, uidvalidity=uv, raw=raw, ref=f"{uv}/{uid}",
                                 size=sizes[uid] if big else None)
            pos += len(chunk)

    def _check_uidvalidity(self, client: _Client, folder: str, uv: int) -> None:
        info = self._ensure_selected(client, folder)
        if info is not None and _uidvalidity(info) != uv:
            raise ServiceError(
                f"{self.where}: UIDVALIDITY of {folder!r} changed during the fetch ({uv} -> {info[b'UIDVALIDITY']})",
                hint="the next pass re-reads the folder; messages already logged are recognised by Message-ID",
            )

    def _new_uids(self, folder: str, uv: int, start: int, uidnext: int | None) -> list[int]:
        """Every UID from ``start`` on, searched in windows of :data:`SEARCH_WINDOW` UIDs.

        One ``SEARCH UID 1:*`` answer on a folder of a few hundred thousand
        messages is one line longer than imaplib accepts (1 MB), hence windows;
        the last one is open-ended so mail arriving meanwhile is not missed.
        """
        def op(c: _Client) -> list[int]:
            self._check_uidvalidity(c, folder, uv)
            found: set[int] = set()
            lo = start
            while uidnext is not None and uidnext - lo > SEARCH_WINDOW:
                found.update(c.search(["UID", f"{lo}:{lo + SEARCH_WINDOW - 1}"]))
                lo += SEARCH_WINDOW
            found.update(c.search(["UID", f"{lo}:*"]))
            # "lo:*" also matches the highest UID when lo is above it: filter.
            return sorted(u for u in found if isinstance(u, int) and u >= start)

        return self._call(f"listing new messages in {folder!r}", op)

    def _large_sizes(self, folder: str, uv: int, start: int, threshold: int) -> dict[int, int]:
        """RFC822.SIZE of the messages above ``threshold`` bytes (searched after the UID list, so none is missed)."""
        def op(c: _Client) -> dict[int, int]:
            self._check_uidvalidity(c, folder, uv)
            big = sorted(u for u in c.search(["UID", f"{start}:*", "LARGER", threshold])
                         if isinstance(u, int) and u >= start)
            sizes: dict[int, int] = {}
            for i in range(0, len(big), 500):
                for uid, d in c.fetch(big[i:i + 500], ["RFC822.SIZE"]).items():
                    sizes[uid] = int(d.get(b"RFC822.SIZE", 0))
            return sizes

        return self._call(f"reading message sizes in {folder!r}", op)

    def _cut(self, uids: list[int], sizes: dict[int, int], small: int) -> list[int]:
        """The leading UIDs whose bodies fit :data:`MAX_BATCH_BYTES` (at least one).

        A UID without a size is one of the small messages (at most ``small`` bytes).
        """
        limit = self.settings.max_message_bytes + 1
        chunk: list[int] = []
        total = 0
        for uid in uids:
            n = min(sizes.get(uid, small), limit)
            if chunk and total + n > MAX_BATCH_BYTES:
                break
            chunk.append(uid)
            total += n
        return chunk

    def _bodies(self, folder: str, uv: int, chunk: list[int], sizes: dict[int, int]) -> dict[int, bytes]:
        limit = self.settings.max_message_bytes
        whole = [u for u in chunk if sizes.get(u, 0) <= limit]
        cut = [u for u in chunk if sizes.get(u, 0) > limit]

        def op(c: _Client) -> dict[int, bytes]:
            self._check_uidvalidity(c, folder, uv)
            out: dict[int, bytes] = {}
            if whole:
                out.update(_whole_bodies(c, whole))
            if cut:
                for uid, d in c.fetch(cut, [f"BODY.PEEK[]<0.{limit + 1}>"]).items():
                    part = d.get(b"BODY[]<0>")
                    if part is not None:
                        log.warning("%s %s: UID %s is %d bytes, above max_message_bytes = %d; reading only the "
                                    "start (it will be quarantined)", self.where, folder, uid, sizes[uid], limit)
                        out[uid] = bytes(part)
            return out

        return self._call(f"reading messages from {folder!r}", op)

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
        uv = _uidvalidity(info)
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

    def close(self) -> None:
        """Log out; a connection that is already gone is simply dropped."""
        if self._client is None:
            return
        try:
            self._client.logout()
        except (*_DROPPED, IMAPClientError):
            self._drop()
        self._client = None
        self._selected = None

    def __enter__(self) -> ImapSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _or_criteria(ids: list[str]) -> list[object]:
    """``OR (HEADER Message-ID a) (OR (HEADER Message-ID b) (...))`` for one search round trip."""
    crit: list[object] = ["HEADER", "Message-ID", ids[-1]]
    for mid in reversed(ids[:-1]):
        crit = ["OR", ["HEADER", "Message-ID", mid], crit]
    return crit


class _quiet:  # noqa: N801 - used like contextlib.suppress
    """Suppress connection errors while tearing down a connection that is already broken."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, (*_DROPPED, IMAPClientError))
