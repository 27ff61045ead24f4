"""Fetched messages are committed in batches (issue #13); what a batch must still guarantee.

The kill test (test_fetch_kill.py) proves exactly-once under SIGKILL with
batches of ten. These cover the other ways a batch can end early: the
mailbox failing part-way (what was read is kept, nothing is read twice) and
a slow mailbox (a batch never stays uncommitted for long). The source is the
real Maildir adapter, wrapped to fail or stall at a chosen message.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_automation import inbound
from crm_automation.errors import ServiceError
from crm_automation.mailbox.base import Cursor, MailboxSource
from crm_automation.models import RawMessage
from crm_automation.worker import Worker
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace

pytestmark = pytest.mark.integration


def _message(i: int) -> bytes:
    sender = f"c{i % 3}@example.com" if i % 2 else f"stranger{i}@elsewhere.test"
    return (f"From: {sender}\r\nTo: sales@example.com\r\nSubject: Re: 报价 {i}\r\n"
            f"Message-ID: <b{i}@example.com>\r\nDate: Fri, 27 Nov 2026 09:{i % 60:02d}:00 +0800\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n好的 {i}\r\n").encode()


def _workspace(tmp_path: Path, n: int, batch: int) -> Path:
    cfg = make_workspace(tmp_path / "ws", mailbox=f'source = "maildir"\npath = "inbox"\nbatch_size = {batch}')
    for i in range(n):
        (tmp_path / "ws" / "inbox" / "new" / f"{1000 + i}.m{i}").write_bytes(_message(i))
    return cfg


class Wrapped:
    """The real source, with a hook called before each message it yields."""

    def __init__(self, real: MailboxSource, before: object) -> None:
        self.real = real
        self.before = before
        self.name = real.name
        self.tracks_names = real.tracks_names
        self.yielded = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def fetch(self, folder: str, cursor: Cursor | None, *, batch: int = 500) -> Iterator[RawMessage]:
        for raw in self.real.fetch(folder, cursor, batch=batch):
            self.before(self.yielded)  # type: ignore[operator]
            self.yielded += 1
            yield raw


def _logged(db: Path) -> list[str]:
    with sqlite3.connect(db, timeout=10) as c:
        return [m for (m,) in c.execute("SELECT message_id FROM activities WHERE message_id IS NOT NULL")]


def test_a_mailbox_failing_part_way_keeps_what_was_read_and_the_next_fetch_reads_only_the_rest(tmp_path):
    cfg = _workspace(tmp_path, 25, batch=10)
    ws = Workspace.load(cfg)
    worker = Worker(ws)
    worker.sync()

    def drop(i: int) -> None:
        if i == 17:
            raise ServiceError("the connection dropped (test)")

    opened = ws.open_mailbox
    ws.open_mailbox = lambda: Wrapped(opened(), drop)  # type: ignore[method-assign]
    res = worker.fetch()
    assert res.error is not None and "dropped" in str(res.error)
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    # 17 messages were read before the drop: the full batch of 10 and the 7 of the batch under way are kept.
    assert len(_logged(db)) == 17
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT COUNT(*) FROM maildir_seen").fetchone()[0] == 17

    ws.open_mailbox = opened  # type: ignore[method-assign]
    res = worker.fetch()
    assert res.error is None and res.stats["messages"] == 8 and res.stats["duplicates"] == 0
    ids = _logged(db)
    assert sorted(ids) == sorted(f"<b{i}@example.com>" for i in range(25))
    worker.close()


def test_a_slow_mailbox_still_commits_what_it_read_within_commit_seconds(tmp_path, monkeypatch):
    """A batch is committed when it is full *or* COMMIT_SECONDS old: a trickle never sits uncommitted."""
    monkeypatch.setattr(inbound, "COMMIT_SECONDS", 0.2)
    cfg = _workspace(tmp_path, 12, batch=500)
    ws = Workspace.load(cfg)
    worker = Worker(ws)
    worker.sync()
    db = tmp_path / "ws" / "var" / "crm.sqlite"
    seen_by_reader: list[int] = []

    def slow(i: int) -> None:
        time.sleep(0.05)
        if i == 11:  # the last message: what another connection (a report, `serve`) can see by now
            seen_by_reader.append(len(_logged(db)))

    opened = ws.open_mailbox
    ws.open_mailbox = lambda: Wrapped(opened(), slow)  # type: ignore[method-assign]
    res = worker.fetch()
    assert res.error is None and res.stats["messages"] == 12
    # 11 messages decided over ~0.55 s: commits happened before the last one was read (about 7 messages
    # by then; 4 leaves room for a busy machine's lag; with only full batches of 500 it would be 0).
    assert seen_by_reader and seen_by_reader[0] >= 4, seen_by_reader
    assert len(_logged(db)) == 12
    worker.close()


def _log_contents(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as c:
        acts = c.execute("SELECT customer_key, kind, subject, body, message_id, in_reply_to, campaign, step, "
                         "json_remove(details, '$.uid'), digest FROM activities WHERE message_id IS NOT NULL "
                         "ORDER BY message_id, digest").fetchall()
        quarantined = c.execute("SELECT error, raw, from_addr, customer_key FROM quarantine ORDER BY digest").fetchall()
        rest = c.execute("SELECT email, reason FROM suppressions ORDER BY email").fetchall()
    return [*acts, *quarantined, *rest]


def test_reading_on_helper_processes_logs_exactly_what_reading_here_logs(tmp_path, monkeypatch):
    """Issue #13: the whole corpus (bounces, auto-replies, unsubscribes, malformed mail) fetched both ways.

    The mailbox is slowed a little so the helpers are up for most of the fetch.
    """
    pools: list[inbound.OrderedPool] = []

    class Recorded(inbound.OrderedPool):  # type: ignore[type-arg]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            pools.append(self)

    monkeypatch.setattr(inbound, "OrderedPool", Recorded)
    corpus = Path(__file__).resolve().parents[1] / "data" / "eml"
    files = sorted(corpus.rglob("*.eml"))
    results = []
    for helpers in (0, 2):
        ws_root = tmp_path / f"h{helpers}"
        cfg = make_workspace(ws_root, mailbox='source = "maildir"\npath = "inbox"\nbatch_size = 25',
                             rows=[{"Email": f"user{i}@163.example.cn", "Name": f"U{i}", "Stage": "lead",
                                    "Owner": "owner@example.com"} for i in range(20)])
        for i, f in enumerate(files):
            (ws_root / "inbox" / "new" / f"{1000 + i}.{f.stem}").write_bytes(f.read_bytes())
        worker = Worker(Workspace.load(cfg))
        worker.sync()
        worker.inbound.parallel = {"helpers": helpers, "start_after": 0, "chunk": 4}
        opened = worker.ws.open_mailbox
        worker.ws.open_mailbox = lambda o=opened: Wrapped(o(), lambda i: time.sleep(0.006))  # type: ignore[method-assign]
        res = worker.fetch()
        worker.close()
        assert res.error is None and res.stats["messages"] == len(files)
        results.append(_log_contents(ws_root / "var" / "crm.sqlite"))
    assert len(results[0]) > len(files) // 2
    assert pools[0].remote_chunks == 0 and pools[1].remote_chunks > 0
    assert results[0] == results[1]


NOTICE = ("From: service@mail.example.cn\r\nTo: sales@example.com\r\nSubject: 退信通知\r\n"
          "Message-ID: <notice-{i}@mail.example.cn>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0800\r\n"
          "Content-Type: text/plain; charset=utf-8\r\n\r\n"
          "很抱歉，您发送的邮件无法送达。\r\n收件人 c1@example.com 用户不存在，邮件已被退回。\r\n")


@pytest.mark.parametrize("helpers", [0, 1])
def test_a_notice_naming_a_customer_is_read_as_their_bounce_wherever_it_is_read(tmp_path, helpers):
    """Reading knows the customers' addresses, here and on helpers (issue #11's rule, issue #13's pool).

    A notice without DSN structure is a bounce only because it names a
    customer next to a failure phrase; read without the customers it is
    an ordinary message. The pool once got an empty address set (the lazy
    index, iterated before it was loaded), which this test catches.
    """
    cfg = make_workspace(tmp_path / "ws", mailbox='source = "maildir"\npath = "inbox"')
    for i in range(120):  # enough for the helpers to take part (eager on a first read; slowed below)
        (tmp_path / "ws" / "inbox" / "new" / f"{1000 + i}.n{i}").write_bytes(NOTICE.format(i=i).encode())
    ws = Workspace.load(cfg)
    worker = Worker(ws)
    worker.sync()
    worker.inbound.parallel = {"helpers": helpers, "start_after": 0, "chunk": 4}
    opened = ws.open_mailbox
    ws.open_mailbox = lambda: Wrapped(opened(), lambda i: time.sleep(0.004))  # type: ignore[method-assign]
    assert worker.fetch().error is None
    worker.close()
    with sqlite3.connect(tmp_path / "ws" / "var" / "crm.sqlite") as c:
        rows = c.execute("SELECT kind, customer_key, COUNT(*) FROM activities WHERE message_id LIKE '<notice-%' "
                         "GROUP BY kind, customer_key").fetchall()
    assert rows == [("bounce", "c1@example.com", 120)]
