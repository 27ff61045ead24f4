"""The workers sharing the log (issue #20): one row per process that runs stages, and the sends each holds.

A worker writes its own row: registered at start, its heartbeat (and the
stage it is in) every third of ``[workspace] heartbeat_timeout``, stopped at
a clean exit. Whether a silent worker is dead is decided above the store
(:func:`crm_automation.fleet.dead_workers`); the store applies the verdict
(:meth:`WorkerLog.stop_workers`), so every later query can say "a live
worker" as ``holder IN (SELECT id FROM workers WHERE stopped_at IS NULL)``.

PostgreSQL also answers whether a worker's session still holds its advisory
lock (:meth:`WorkerLog.unlocked_workers`): a killed process's session is
closed by its kernel at once, so a SIGKILLed worker is found dead at the next
look instead of after the timeout. SQLite has no such lock; its workspace
lock file already means one worker at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from crm_automation.store.connection import Connection, iso, parse_iso
from crm_automation.store.dialect import SQLITE

# The sends part's column list and row builder, reused (not copied): one text per query (issue #20).
from crm_automation.store.sends import _SEND_COLS, SendRow, _send

# The rows recovery may resolve (issue #20, rule 4): ``sending`` with no holder (a row from before schema 12),
# this worker's own (left by a failure of its own earlier pass), or a dead worker's. A live worker's are never
# taken: with the outbox transport, requeueing one would send it twice. ``status = 'sending'`` as a literal:
# SQLite uses schema 6's partial index only then.
_STUCK = (f"SELECT {_SEND_COLS} FROM sends WHERE status = 'sending' AND (holder IS NULL OR holder = ? OR "
          "holder NOT IN (SELECT id FROM workers WHERE stopped_at IS NULL)) ORDER BY id")
_WORKER_COLS = ("w.id, w.host, w.pid, w.started_at, w.heartbeat_at, w.stage, w.stopped_at, "
                "(SELECT COUNT(*) FROM sends s WHERE s.holder = w.id AND s.status IN ('queued', 'sending'))")


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker as the log records it. ``claimed``: the sends it holds (``queued`` claimed, or ``sending``)."""

    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    stage: str | None
    stopped_at: datetime | None
    claimed: int = 0


_NEVER = datetime.min.replace(tzinfo=UTC)  # NOT NULL columns: only a row written by hand could lack a time


def _worker(wid: str, host: str, pid: int, started: str, beat: str, stage: str | None, stopped: str | None,
            claimed: int | None) -> WorkerRow:
    return WorkerRow(wid, host, int(pid), parse_iso(started) or _NEVER, parse_iso(beat) or _NEVER,
                     stage, parse_iso(stopped), int(claimed or 0))


class WorkerLog(Connection):
    """The ``workers`` table and the worker-held sends."""

    def register_worker(self, worker_id: str, host: str, pid: int, now: datetime) -> None:
        """Record a worker that starts (its first heartbeat is its start)."""
        with self.transaction():
            self.conn.execute("INSERT INTO workers (id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
                              (worker_id, host, pid, iso(now), iso(now)))

    def beat(self, worker_id: str, now: datetime, stage: str | None) -> bool:
        """Record a heartbeat and the stage the worker is in; False when its row says it stopped (found dead).

        One conditional update: a worker another one took for dead (its
        heartbeat was late) learns it here and must stop, as its ``sending``
        rows may already have been resolved.
        """
        with self.transaction():
            cur = self.conn.execute("UPDATE workers SET heartbeat_at = ?, stage = ? WHERE id = ? AND "
                                    "stopped_at IS NULL", (iso(now), stage, worker_id))
            return cur.rowcount == 1

    def stop_workers(self, ids: Iterable[str], now: datetime) -> list[str]:
        """Mark workers stopped (a clean exit, or found dead); which were running until now."""
        out = []
        with self.transaction():
            for wid in ids:
                cur = self.conn.execute("UPDATE workers SET stopped_at = ? WHERE id = ? AND stopped_at IS NULL",
                                        (iso(now), wid))
                if cur.rowcount == 1:
                    out.append(wid)
        return out

    def forget_workers(self, stopped_before: datetime) -> int:
        """Delete the rows of workers stopped before ``stopped_before``; how many."""
        with self.transaction():
            cur = self.conn.execute("DELETE FROM workers WHERE stopped_at < ?", (iso(stopped_before),))
            return int(cur.rowcount)

    def workers(self, *, stopped_since: datetime | None = None) -> list[WorkerRow]:
        """The workers not marked stopped, and those stopped since ``stopped_since`` (None: none), by start."""
        cond, args = "w.stopped_at IS NULL", []
        if stopped_since is not None:
            cond += " OR w.stopped_at >= ?"
            args.append(iso(stopped_since))
        rows = self.conn.execute(f"SELECT {_WORKER_COLS} FROM workers w WHERE {cond} ORDER BY w.started_at, w.id",
                                 args)
        return [_worker(*r) for r in rows]

    def unlocked_workers(self, ids: Iterable[str]) -> set[str]:
        """Of these workers, those whose session lock another session can take now: dead (PostgreSQL only).

        SQLite: none (no such lock; its lock file keeps one worker).
        """
        if self.dialect is SQLITE:
            return set()
        from crm_automation.store import postgres

        return postgres.unlocked_workers(self.conn, ids)

    def stuck_sends(self, worker_id: str) -> list[SendRow]:
        """The ``sending`` rows recovery resolves: no holder, this worker's own, or a worker not running."""
        return [_send(*r) for r in self.conn.execute(_STUCK, (worker_id,))]
