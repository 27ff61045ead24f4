"""Issue #9: the Maildir source finds every message not yet logged, whatever its file time.

The old cursor was the newest file time logged, which lost a message whose
time is older: moved back from Junk (a rename keeps the time), restored with
``cp -p``, or linked into ``new/`` by a busy MTA after the cursor passed it.
The last test reproduces the MTA case with concurrent writers that set an
earlier time before the rename, while the worker fetches.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from crm_automation.worker import Worker
from crm_automation.workspace import Workspace
from tests.fixtures.core import db_rows, make_workspace


def msg(i: int, sender: str = "c0@example.com") -> bytes:
    return (f"From: {sender}\r\nTo: sales@example.com\r\nSubject: note {i}\r\nMessage-ID: <m{i}@example.com>\r\n"
            f"Date: Fri, 27 Nov 2026 09:00:00 +0800\r\n\r\nBody {i}\r\n").encode()


def deliver(maildir, data: bytes, *, mtime: float | None = None, sub: str = "new", name: str | None = None) -> str:
    """Write into tmp/, set the time, rename into new/ (or cur/), as an MTA or a mail client does."""
    name = name or f"{time.time():.6f}.{uuid.uuid4().hex}.host"
    tmp = maildir / "tmp" / name
    tmp.write_bytes(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    tmp.rename(maildir / sub / name)
    return name


def logged(db) -> list[str]:
    return [m for (m,) in db_rows(db, "SELECT message_id FROM activities WHERE kind = 'email_in' ORDER BY id")]


def test_a_message_older_than_everything_logged_is_still_read(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    inbox = tmp_path / "ws" / "inbox"
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    deliver(inbox, msg(1))
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    # Moved back from Junk by a mail client: an old time, in cur/ with flags.
    deliver(inbox, msg(2), mtime=time.time() - 86400 * 30, sub="cur", name="1600000000.junk.host:2,S")
    # Restored from a backup with cp -p: a time from last year.
    deliver(inbox, msg(3), mtime=time.time() - 86400 * 365)
    assert cli("fetch", "--config", str(cfg)).code == 0
    assert sorted(logged(db)) == ["<m1@example.com>", "<m2@example.com>", "<m3@example.com>"]


def test_a_client_moving_and_flagging_a_logged_file_does_not_log_it_again(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws")
    inbox = tmp_path / "ws" / "inbox"
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    name = deliver(inbox, msg(1))
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    (inbox / "new" / name).rename(inbox / "cur" / f"{name}:2,S")  # read in a mail client
    assert cli("fetch", "--config", str(cfg), "--json").code == 0
    assert logged(db) == ["<m1@example.com>"]
    assert db_rows(db, "SELECT COUNT(*) FROM maildir_seen") == [(1,)]


def test_concurrent_delivery_with_earlier_file_times_loses_nothing(tmp_path):
    cfg = make_workspace(tmp_path / "ws")
    inbox = tmp_path / "ws" / "inbox"
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    writers, per_writer, per_fetch = 4, 60, 15
    start = threading.Barrier(writers + 1)
    # The writers keep pace with the fetches (a writer's message j waits for fetch j // per_fetch), so
    # fetches interleave with deliveries however fast or slow the machine is.
    fetched = threading.Condition()
    fetches = 0

    def writer(n: int) -> None:
        start.wait()
        for j in range(per_writer):
            with fetched:
                fetched.wait_for(lambda j=j: fetches >= j // per_fetch, timeout=30)
            # Like Postfix's virtual agent: the time is set when writing ends, the link comes later.
            deliver(inbox, msg(n * 1000 + j), mtime=time.time() - 5)
            time.sleep(0.002)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    w = Worker(Workspace.load(cfg))
    try:
        assert w.sync().ok
        start.wait()
        during = 0
        while any(t.is_alive() for t in threads):
            r = w.fetch()
            assert r.error is None
            during += 1
            with fetched:
                fetches += 1
                fetched.notify_all()
        for t in threads:
            t.join()
        assert w.fetch().error is None
    finally:
        w.close()
    ids = logged(db)
    assert during >= (per_writer - 1) // per_fetch  # the fetches really ran while the writers delivered
    assert len(ids) == writers * per_writer
    assert len(set(ids)) == len(ids)


def test_a_poll_with_nothing_new_reads_no_file(tmp_path, monkeypatch):
    cfg = make_workspace(tmp_path / "ws")
    inbox = tmp_path / "ws" / "inbox"
    for i in range(50):
        deliver(inbox, msg(i))
    w = Worker(Workspace.load(cfg))
    try:
        assert w.sync().ok
        assert w.fetch().stats["messages"] == 50
        from pathlib import Path

        opened: list[str] = []
        real_open = Path.open

        def spy(self, *a, **kw):
            opened.append(self.name)
            return real_open(self, *a, **kw)

        monkeypatch.setattr(Path, "open", spy)
        r = w.fetch()
    finally:
        w.close()
    assert r.stats["messages"] == 0
    assert not [n for n in opened if n.endswith(".host")]
