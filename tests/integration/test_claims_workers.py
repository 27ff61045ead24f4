"""Several workers' send passes on one log (issue #20, stage 2): claims, limits counted in the log, recovery.

Each worker is a :class:`~crm_automation.worker.Worker` with its own
connection and name, in its own thread, against a real aiosmtpd server or
the outbox; the log is a SQLite file or a PostgreSQL database
(``log_location``). A SQLite workspace has one worker in production (its
lock file); these passes show the store's claims hold on both engines.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crm_automation.stage import StageResult
from crm_automation.store.repo import Store
from crm_automation.transports.base import Transport
from crm_automation.worker import Worker
from crm_automation.workspace import Clock, Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai
CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'


class FrozenClock(Clock):
    """Time stands still: a rate limit reached stays reached for the whole test."""

    def now(self) -> datetime:
        return T0


def rows(n: int) -> list[dict[str, str]]:
    return [{"Email": f"c{i:03d}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "o@example.com"}
            for i in range(n)]


def workspace(tmp_path: Path, log_location: str, n: int, *, outbound: str = "", limits: str = "") -> Path:
    cfg = make_workspace(tmp_path / "ws", rows=rows(n), campaigns=CAMPAIGN, outbound=outbound,
                         database=database_value(log_location))
    if limits:
        cfg.write_text(cfg.read_text().replace("max_per_minute = 0\n", limits), encoding="utf-8")
    return cfg


def queued_by_one_worker(cfg: Path, clock: Clock | None = None) -> None:
    """Sync and queue every send (``limit=0``: nothing handed over), as a first pass would."""
    w = Worker(Workspace.load(cfg), clock=clock)
    try:
        assert w.sync().ok
        res = w.send(limit=0)
        assert res.stats["sent"] == 0 and res.stats["planned"] > 0, res
    finally:
        w.close()


def send_rows(store: Store) -> list[dict[str, object]]:
    cols = ("id", "customer_key", "status", "holder", "message_id")
    return [dict(zip(cols, r, strict=True)) for r in store.conn.execute(
        "SELECT id, customer_key, status, holder, message_id FROM sends WHERE campaign = 'hello' ORDER BY id")]


def table(cfg: Path) -> list[dict[str, object]]:
    store = Workspace.load(cfg).open_store()
    try:
        return send_rows(store)
    finally:
        store.close()


def in_threads(n: int, make: Callable[[], Worker]) -> list[tuple[str, StageResult]]:
    """``n`` workers, each made, run (one send pass) and closed in its own thread (SQLite's connections are)."""
    out: list[tuple[str, StageResult]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            w = make()
            try:
                out.append((w.ctx.fleet.worker_id, w.send()))
            finally:
                w.close()
        except BaseException as e:  # noqa: BLE001 - reported by the test below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return out


def test_two_workers_in_threads_hand_each_send_over_once_and_split_the_queue(tmp_path, smtpd, pg_log):
    """Two passes at once on one PostgreSQL log, to one SMTP server: each customer once, each by its claimer."""
    n = 60
    cfg = workspace(tmp_path, pg_log, n, outbound=f'transport = "smtp"\nhost = "{smtpd.host}"\nport = {smtpd.port}\n'
                                                 'security = "none"\ntimeout = 10')
    queued_by_one_worker(cfg)
    smtpd.handler.data_delay = 0.005
    start = threading.Barrier(2, timeout=60)

    class Together:  # both passes begin handing over at the same instant: the queue is shared from the start
        def __call__(self, desc: str, total: int | None) -> Together:
            if desc == "send":
                start.wait()
            return self

        def advance(self, k: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    results = in_threads(2, lambda: Worker(Workspace.load(cfg), progress=Together()))
    sends = table(cfg)
    got = Counter(m.rcpt_tos[0] for m in smtpd.messages)
    assert got == Counter(r["Email"].lower() for r in rows(n))  # every customer exactly once
    assert len({m.message_id for m in smtpd.messages}) == n
    assert {r["status"] for r in sends} == {"sent"}
    # Each sent row names the worker that claimed and sent it, and both had a share of the queue.
    assert Counter(r["holder"] for r in sends) == {name: res.stats["sent"] for name, res in results}
    assert all(res.stats["sent"] > 0 for _, res in results)


class MeetFirst(Transport):
    """The real transport, but each pass's first hand-over waits until every pass has read its counts."""

    def __init__(self, real: Transport, barrier: threading.Barrier) -> None:
        self.real, self.barrier, self.first = real, barrier, True

    def open(self) -> None:
        self.real.open()

    def close(self) -> None:
        self.real.close()

    def handed_over(self, message_ids):
        return self.real.handed_over(message_ids)

    def send(self, data, *, sender, recipients, message_id, meanwhile=None, claim=None) -> bool:
        if self.first:
            self.first = False
            self.barrier.wait()
        return self.real.send(data, sender=sender, recipients=recipients, message_id=message_id,
                              meanwhile=meanwhile, claim=claim)


TWO_CAMPAIGNS = ('[[campaign]]\nid = "leads"\ntemplate = "leads"\ntrigger = "new"\ninclude_existing = true\n'
                 'where = { stage = "lead" }\n\n'
                 '[[campaign]]\nid = "won"\ntemplate = "won"\ntrigger = "new"\ninclude_existing = true\n'
                 'where = { stage = "won" }\n')
GOOD = "Subject: Hello {{ customer.name }}\n\nHi {{ customer.name }}\n"
BROKEN = "Subject: Hello {{ customer.name \n\nHi\n"  # a syntax error: the campaign is held, its sends stay queued


def test_max_per_minute_holds_across_two_workers_exactly(tmp_path, log_location, monkeypatch):
    """``max_per_minute = 3``, two workers sending at once: 3 messages in the minute, not 3 each.

    The workers hand over different sends (each has the other campaign's
    template broken, so each holds that campaign), as two machines do, and
    both have read the log before either hands anything over.
    """
    people = [{"Email": f"c{i:03d}@example.com", "Name": f"Customer {i}", "Stage": "lead" if i < 5 else "won",
               "Owner": "o@example.com"} for i in range(10)]
    database = log_location if log_location.startswith("postgresql://") else str(tmp_path / "shared.sqlite")

    def ws(name: str, leads: str, won: str) -> Path:
        cfg = make_workspace(tmp_path / name, rows=people, campaigns=TWO_CAMPAIGNS, database=database,
                             templates={"leads.txt": leads, "won.txt": won})
        cfg.write_text(cfg.read_text().replace("max_per_minute = 0\n", "max_per_minute = 3\n"), encoding="utf-8")
        return cfg

    queued_by_one_worker(ws("first", GOOD, GOOD), FrozenClock(T0))
    cfgs = iter([ws("a", GOOD, BROKEN), ws("b", BROKEN, GOOD)])
    lock = threading.Lock()

    def make() -> Worker:
        with lock:
            cfg = next(cfgs)
        # The clock stands still, so a full minute stays full: a pass that must wait stops (its wait says "stop").
        return Worker(Workspace.load(cfg), clock=FrozenClock(T0), wait=lambda s: True)

    barrier = threading.Barrier(2, timeout=60)
    real_open = Workspace.open_transport
    monkeypatch.setattr(Workspace, "open_transport", lambda w: MeetFirst(real_open(w), barrier))
    results = in_threads(2, make)
    store = Store.open(database)
    try:
        sends = [dict(zip(("campaign", "status", "holder"), r, strict=True)) for r in store.conn.execute(
            "SELECT campaign, status, holder FROM sends ORDER BY id")]
    finally:
        store.close()
    assert sum(r.stats["sent"] for _, r in results) == 3, [r.stats for _, r in results]
    assert Counter(r["status"] for r in sends) == {"sent": 3, "queued": 7}
    outboxes = [tmp_path / name / "var" / "outbox" for name in ("a", "b")]
    assert sum(len(list(o.glob("*.eml"))) for o in outboxes) == 3
    assert {r["holder"] for r in sends if r["status"] == "queued"} == {None}  # released: another may take them
