"""One behavioural suite for every MailboxSource: a real Maildir in tmp_path, a real Dovecot over IMAP.

Each backend harness builds the source the way the worker does (config.toml
-> ``Workspace.load`` -> ``open_mailbox``), delivers mail the way that store
receives it (stdlib :mod:`mailbox` into ``new/``; IMAP APPEND through stdlib
imaplib, never the client under test), shows what the store holds so the
tests can check that reading changed nothing, and builds "the cursor after
these messages" as the worker would have stored it: the set of names logged
for Maildir (``Cursor.seen``, issue #9), UIDVALIDITY plus the last UID for
IMAP (RFC 3501 §2.3.1.1). The test bodies are common; only the harness knows
how each store works.
"""

from __future__ import annotations

import email.utils
import imaplib
import mailbox
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from crm_automation.errors import ServiceError
from crm_automation.mailbox.base import Cursor, MailboxSource
from crm_automation.models import RawMessage
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.dovecot import free_port

PW_ENV = "CRM_CONTRACT_IMAP_PASSWORD"
DAY = 86_400


def message(i: int, *, body: str | None = None) -> bytes:
    """A small RFC 5322 message with CRLF line ends, unique by ``i`` and a random Message-ID."""
    text = (
        f"From: customer{i}@example.test\r\nTo: sales@example.test\r\nSubject: =?utf-8?b?5L2g5aW9?= {i}\r\n"
        f"Date: {email.utils.formatdate(1_780_000_000 + i * 60)}\r\n"
        f"Message-ID: <contract-{i}-{uuid.uuid4().hex[:8]}@example.test>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{body or f'第 {i} 封。Hello, this is message number {i}.'}\r\n"
    )
    return text.encode("utf-8")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{x}"' for x in items) + "]"


def _open(root: Path, mailbox_toml: str) -> MailboxSource:
    """The source as the worker gets it: config.toml, Workspace.load, open_mailbox."""
    return Workspace.load(make_workspace(root, mailbox=mailbox_toml)).open_mailbox()


class MaildirHarness:
    """A Maildir in tmp_path, written with stdlib :mod:`mailbox` (subfolders in the Maildir++ layout)."""

    name = "maildir"

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "ws"
        self.path = self.root / "inbox"
        self.made: list[MailboxSource] = []
        # File times: one second apart in delivery order, starting a day ago (a later delivery is newer).
        self._clock = time.time() - DAY
        self._mtime_ns: dict[str, int] = {}

    @property
    def where(self) -> str:
        """What an error about this store must name."""
        return str(self.path)

    def make(self, folders: list[str] | None = None, *, max_message_bytes: int | None = None) -> MailboxSource:
        lines = ['source = "maildir"', 'path = "inbox"', f"folders = {_toml_list(folders or ['INBOX'])}"]
        if max_message_bytes is not None:
            lines.append(f"max_message_bytes = {max_message_bytes}")
        src = _open(self.root, "\n".join(lines))
        self.made.append(src)
        for f in folders or []:
            self._folder(f)
        return src

    def make_unreachable(self) -> MailboxSource:
        """A configured path with no Maildir at all."""
        self.path = self.root / "no-such-maildir"
        src = _open(self.root, 'source = "maildir"\npath = "no-such-maildir"')
        self.made.append(src)
        return src

    def _dir(self, folder: str) -> Path:
        # Maildir++ (Courier, Dovecot, Postfix virtual): ".A.B" for the folder a client shows as "A/B".
        return self.path if folder == "INBOX" else self.path / ("." + folder.replace("/", "."))

    def _folder(self, folder: str) -> mailbox.Maildir:
        box = mailbox.Maildir(self.path, factory=None, create=True)
        if folder == "INBOX":
            return box
        if not self._dir(folder).is_dir():
            box.add_folder(folder.replace("/", "."))
        return mailbox.Maildir(self._dir(folder), factory=None, create=False)

    def deliver(self, messages: list[bytes], folder: str = "INBOX", *, old: bool = False) -> list[str]:
        """Add messages to ``new/`` in order; returns their keys (the Maildir base names).

        ``old``: the files get a time a month back, as a message moved back
        from Junk or restored with ``cp -p`` has.
        """
        box = self._folder(folder)
        keys = []
        for raw in messages:
            key = box.add(raw)
            if old:
                t = time.time() - 30 * DAY
            else:
                self._clock += 1
                t = self._clock
            os.utime(self._dir(folder) / "new" / key, (t, t))
            self._mtime_ns[key] = (self._dir(folder) / "new" / key).stat().st_mtime_ns
            keys.append(key)
        return keys

    def cursor_after(self, src: MailboxSource, folder: str, keys: list[str]) -> Cursor:
        """The cursor the worker stores once these messages are logged: their names (the UID is only for show)."""
        return Cursor(src.uidvalidity(folder), max(self._mtime_ns[k] for k in keys), frozenset(keys))

    def server_uidvalidity(self, folder: str) -> int:
        """Maildir has no UIDVALIDITY; the source reports 1 forever (its cursor, a set of names, never resets)."""
        return 1

    def snapshot(self, folder: str = "INBOX") -> object:
        """Every file with its sub-folder, name (flags live in the name), time and size."""
        d = self._dir(folder)
        out = []
        for sub in ("new", "cur", "tmp"):
            for p in sorted((d / sub).iterdir()) if (d / sub).is_dir() else []:
                st = p.stat()
                out.append((sub, p.name, st.st_mtime_ns, st.st_size))
        return out

    def close(self) -> None:
        for s in self.made:
            s.close()


_UID = re.compile(rb"UID (\d+)")
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


class ImapHarness:
    """A fresh user on the session's Dovecot; mail goes in by APPEND through stdlib imaplib."""

    name = "imap"

    def __init__(self, tmp: Path, account, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = tmp / "ws"
        self.account = account
        self.port = account.server.port
        self.made: list[MailboxSource] = []
        monkeypatch.setenv(PW_ENV, account.password)

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _toml(self, port: int, folders: list[str], max_message_bytes: int | None) -> str:
        lines = ['source = "imap"', 'host = "127.0.0.1"', f"port = {port}", 'security = "none"',
                 f'username = "{self.account.user}"', f'password_env = "{PW_ENV}"', "timeout = 10",
                 f"folders = {_toml_list(folders)}"]
        if max_message_bytes is not None:
            lines.append(f"max_message_bytes = {max_message_bytes}")
        return "\n".join(lines)

    def make(self, folders: list[str] | None = None, *, max_message_bytes: int | None = None) -> MailboxSource:
        for f in folders or []:
            if f != "INBOX":
                self.account.create(f.replace("/", "."))  # Dovecot's Maildir++ delimiter is "."
        src = _open(self.root, self._toml(self.port, folders or ["INBOX"], max_message_bytes))
        self.made.append(src)
        return src

    def make_unreachable(self) -> MailboxSource:
        """A closed port on loopback."""
        self.port = free_port()
        src = _open(self.root, self._toml(self.port, ["INBOX"], None))
        self.made.append(src)
        return src

    def deliver(self, messages: list[bytes], folder: str = "INBOX", *, old: bool = False) -> list[int]:
        """APPEND in order; returns the UIDs (APPENDUID). ``old``: an INTERNALDATE a month back."""
        name = '"' + folder.replace("/", ".") + '"'
        uids = []
        with self.account.session() as c:
            c.create(name)
            for raw in messages:
                when = imaplib.Time2Internaldate(time.time() - 30 * DAY) if old else None
                typ, data = c.append(name, None, when, raw)
                assert typ == "OK", data
                uids.append(int(data[0].decode().split("APPENDUID", 1)[1].split()[1].rstrip("]")))
        return uids

    def cursor_after(self, src: MailboxSource, folder: str, uids: list[int]) -> Cursor:
        """UIDVALIDITY (asked of the server, not the source) and the last UID logged."""
        return Cursor(self.server_uidvalidity(folder), max(uids))

    def server_uidvalidity(self, folder: str) -> int:
        return self.account.uidvalidity(folder.replace("/", "."))

    def snapshot(self, folder: str = "INBOX") -> object:
        """Every UID with its flags (``\\Recent`` aside: it belongs to the session, not the message)."""
        out = []
        with self.account.session() as c:
            typ, _ = c.select('"' + folder.replace("/", ".") + '"', readonly=True)
            assert typ == "OK"
            _, data = c.uid("FETCH", "1:*", "(FLAGS)")
            for item in data:
                line = item[0] if isinstance(item, tuple) else item
                if not line:
                    continue
                uid, flags = _UID.search(line), _FLAGS.search(line)
                assert uid is not None and flags is not None, line
                out.append((int(uid.group(1)), sorted(set(flags.group(1).split()) - {b"\\Recent"})))
        return sorted(out)

    def close(self) -> None:
        for s in self.made:
            s.close()


@pytest.fixture(params=["maildir", pytest.param("imap", marks=pytest.mark.integration)])
def backend(request, tmp_path, monkeypatch):
    if request.param == "maildir":
        h = MaildirHarness(tmp_path)
    else:
        h = ImapHarness(tmp_path, request.getfixturevalue("imap_account"), monkeypatch)
    yield h
    h.close()


def _fetch(src: MailboxSource, folder: str = "INBOX", cursor: Cursor | None = None, **kw) -> list[RawMessage]:
    return list(src.fetch(folder, cursor, **kw))


# ------------------------------------------------------------------------------------------ reading


def test_a_fresh_folder_yields_every_message_once_in_order(backend):
    src = backend.make()
    sent = [message(i) for i in range(5)]
    backend.deliver(sent)
    got = _fetch(src)
    assert [m.raw for m in got] == sent  # every byte, each once, in delivery order
    assert [m.uid for m in got] == sorted(m.uid for m in got)  # "in UID order" (Maildir: file time)
    uv = src.uidvalidity("INBOX")
    assert {(m.folder, m.uidvalidity, m.size) for m in got} == {("INBOX", uv, None)}
    assert [m.raw for m in _fetch(src, batch=2)] == sent  # the batch size changes round trips, not results


def test_an_empty_folder_yields_nothing(backend):
    src = backend.make()
    backend.deliver([])
    assert _fetch(src) == []


def test_the_cursor_after_the_last_message_yields_only_newer_ones(backend):
    src = backend.make()
    first = backend.deliver([message(i) for i in range(3)])
    assert len(_fetch(src)) == 3
    cursor = backend.cursor_after(src, "INBOX", first)
    assert _fetch(src, cursor=cursor) == []  # a poll with nothing new
    newer = [message(i) for i in range(3, 5)]
    backend.deliver(newer)
    assert [m.raw for m in _fetch(src, cursor=cursor)] == newer
    assert [m.raw for m in _fetch(src, cursor=cursor, batch=1)] == newer


def test_a_cursor_in_the_middle_yields_the_rest(backend):
    src = backend.make()
    sent = [message(i) for i in range(4)]
    handles = backend.deliver(sent)
    assert [m.raw for m in _fetch(src, cursor=backend.cursor_after(src, "INBOX", handles[:2]))] == sent[2:]


def test_a_message_arriving_after_the_cursor_is_read_even_when_it_looks_older(backend):
    """Issue #9: moved back from Junk, restored with ``cp -p``: an old file time or INTERNALDATE, but new here."""
    src = backend.make()
    first = backend.deliver([message(i) for i in range(2)])
    cursor = backend.cursor_after(src, "INBOX", first)
    late = [message(9)]
    backend.deliver(late, old=True)
    assert [m.raw for m in _fetch(src, cursor=cursor)] == late


def test_fetching_marks_nothing_read_and_deletes_nothing(backend):
    src = backend.make(["INBOX"])
    sent = [message(i) for i in range(3)]
    handles = backend.deliver(sent)
    before = backend.snapshot()
    assert len(_fetch(src)) == 3
    assert len(_fetch(src, cursor=backend.cursor_after(src, "INBOX", handles[:1]))) == 2
    src.uidvalidity("INBOX")
    src.close()
    assert backend.snapshot() == before
    assert [m.raw for m in _fetch(src)] == sent  # still all there, still "new", to a fresh read


def test_tracks_names_says_how_the_cursor_works(backend):
    """The worker's rule (worker.fetch): names in ``Cursor.seen`` when ``tracks_names``, else the last UID."""
    src = backend.make()
    backend.deliver([message(i) for i in range(3)])
    got = _fetch(src)
    uv = src.uidvalidity("INBOX")
    if src.tracks_names:
        keys = [m.seen_key for m in got]
        assert None not in keys
        assert len(set(keys)) == len(keys)
        cursor = Cursor(uv, 0, frozenset(k for k in keys if k is not None))  # no UID at all: names alone
    else:
        assert {m.seen_key for m in got} == {None}
        cursor = Cursor(uv, got[-1].uid)
    assert _fetch(src, cursor=cursor) == []
    newer = [message(7)]
    backend.deliver(newer)
    assert [m.raw for m in _fetch(src, cursor=cursor)] == newer


# ------------------------------------------------------------------------------------------ folders


def test_folders_and_uidvalidity_answer(backend):
    src = backend.make(["INBOX", "Archive"])
    assert src.folders() == ["INBOX", "Archive"]  # as configured, in order
    inbox, archive = [message(i) for i in range(2)], [message(i) for i in range(2, 4)]
    backend.deliver(inbox)
    backend.deliver(archive, "Archive")
    for folder, sent in (("INBOX", inbox), ("Archive", archive)):
        uv = src.uidvalidity(folder)
        assert isinstance(uv, int)
        assert uv > 0
        assert uv == src.uidvalidity(folder) == backend.server_uidvalidity(folder)
        got = _fetch(src, folder)
        assert [m.raw for m in got] == sent  # each folder holds its own mail
        assert {(m.folder, m.uidvalidity) for m in got} == {(folder, uv)}


def test_a_subfolder_is_named_with_a_slash_as_mail_clients_show_it(backend, request):
    """``folders = ["CRM/Leads"]``: "/" is the hierarchy separator in the config, whatever the store uses.

    ImapSource translates it to the server's delimiter. Dovecot, Courier and
    Postfix's virtual delivery keep that folder as ``.CRM.Leads`` on disk
    (Maildir++), which is what both the IMAP server here and the Maildir
    harness write.
    """
    src = backend.make(["CRM/Leads"])
    sent = [message(1)]
    backend.deliver(sent, "CRM/Leads")
    assert src.uidvalidity("CRM/Leads") > 0
    assert [(m.folder, m.raw) for m in _fetch(src, "CRM/Leads")] == [("CRM/Leads", sent[0])]


def _break(backend, what: str) -> tuple[MailboxSource, str]:
    """A source and a folder that is not there: a folder missing from the store, or the whole store."""
    if what == "folder":
        return backend.make(), "Nope"
    return backend.make_unreachable(), "INBOX"


@pytest.mark.parametrize("what", ["folder", "mailbox"])
def test_a_missing_folder_or_mailbox_is_a_service_error_naming_it(backend, what):
    """A folder that does not exist; no Maildir at the configured path, or nothing listening on the IMAP port."""
    src, folder = _break(backend, what)
    with pytest.raises(ServiceError) as e:
        src.uidvalidity(folder)
    if what == "folder":
        assert "Nope" in str(e.value)
    assert backend.where in str(e.value)
    assert e.value.hint


@pytest.mark.parametrize("what", ["folder", "mailbox"])
def test_fetching_a_missing_folder_or_mailbox_is_a_service_error_not_an_empty_folder(backend, what, request):
    """A misconfigured folder must not read as "no new mail" forever, whoever calls ``fetch``.

    The protocol does not require ``uidvalidity`` before ``fetch``; the
    worker calls it first today, the inbound pipeline of issue #10 need not.
    """
    src, folder = _break(backend, what)
    with pytest.raises(ServiceError) as e:
        _fetch(src, folder)
    if what == "folder":
        assert "Nope" in str(e.value)
    assert backend.where in str(e.value)


# ------------------------------------------------------------------------------------------ limits


def test_a_message_above_max_message_bytes_is_yielded_cut_with_its_full_size(backend):
    """Its start (one byte over the limit, so the parser refuses it and the worker quarantines it) and its size.

    The cursor must pass it, and it stays whole in the store.
    """
    limit = 1024  # the smallest max_message_bytes config.py accepts
    src = backend.make(max_message_bytes=limit)
    big = message(2, body="x" * 70 + "\r\n" + ("line of a large message " * 3 + "\r\n") * 80)
    assert len(big) > 4 * limit
    sent = [message(1), big, message(3)]
    backend.deliver(sent)
    before = backend.snapshot()
    got = _fetch(src)
    assert [len(m.raw) for m in got] == [len(sent[0]), limit + 1, len(sent[2])]
    assert got[1].raw == big[: limit + 1]
    assert [m.size for m in got] == [None, len(big), None]
    assert [got[0].raw, got[2].raw] == [sent[0], sent[2]]
    assert backend.snapshot() == before


def test_a_message_of_exactly_max_message_bytes_is_whole(backend):
    limit = 1024
    src = backend.make(max_message_bytes=limit)
    exact = message(1, body="y" * (limit - len(message(1, body="y")) + 1))
    assert len(exact) == limit
    backend.deliver([exact])
    got = _fetch(src)
    assert [(m.raw, m.size) for m in got] == [(exact, None)]


# ------------------------------------------------------------------------------------------ lifetime


def test_close_twice_is_harmless_and_the_source_reads_again(backend):
    src = backend.make()
    sent = [message(1)]
    backend.deliver(sent)
    src.close()  # before any use
    assert [m.raw for m in _fetch(src)] == sent
    src.close()
    src.close()
    assert [m.raw for m in _fetch(src)] == sent  # a closed source opens again on the next pass
    src.close()


def test_the_source_has_a_name(backend):
    src = backend.make()
    assert isinstance(src.name, str)
    assert src.name
    assert isinstance(src.tracks_names, bool)


def test_mark_processed_without_a_processed_folder_moves_nothing(backend):
    src = backend.make()
    backend.deliver([message(i) for i in range(2)])
    before = backend.snapshot()
    got = _fetch(src)
    src.mark_processed(got)
    src.mark_processed([])
    assert backend.snapshot() == before
    assert len(_fetch(src)) == 2


# ------------------------------------------------------------------------------------------ recovery
# ``find_message_ids`` is how crash recovery asks whether a send reached the Sent folder (issue #10, item 4).


def _with_id(i: int, mid: str) -> bytes:
    return re.sub(rb"Message-ID: <[^>]*>", f"Message-ID: {mid}".encode(), message(i), count=1)


def test_find_message_ids_names_the_ones_in_the_folder_as_given(backend):
    src = backend.make()
    backend.deliver([_with_id(1, "<sent-1@example.com>"), _with_id(2, "<sent-2@example.com>"), message(3)], "Sent")
    asked = ["<sent-1@example.com>", "sent-2@example.com", "<never-sent@example.com>"]
    before = backend.snapshot("Sent")
    assert src.find_message_ids("Sent", asked) == {"<sent-1@example.com>", "sent-2@example.com"}
    assert src.find_message_ids("Sent", []) == set()
    assert backend.snapshot("Sent") == before


def test_find_message_ids_in_a_missing_folder_finds_nothing(backend):
    src = backend.make()
    assert src.find_message_ids("No Such Sent", ["<sent-1@example.com>"]) == set()


def test_find_message_ids_ignores_case(backend, request):
    """The protocol: "ids compare without their angle brackets' case" (a client or server may change it)."""
    src = backend.make()
    backend.deliver([_with_id(1, "<Sent-1@Example.COM>")], "Sent")
    assert src.find_message_ids("Sent", ["<sent-1@example.com>"]) == {"<sent-1@example.com>"}
