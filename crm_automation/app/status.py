"""``crm-automation status``: the workers of a workspace, alive and recently stopped (issue #20, rule 7).

Read-only, without the workspace lock (:func:`~crm_automation.app.access.reading`),
so it works beside running workers and on both engines. Whether a worker is
alive is :func:`crm_automation.fleet.dead_workers`' rule, read here without
writing anything: a worker not marked stopped is shown ``dead`` when its
session lock is free (PostgreSQL: a killed process) or its heartbeat is older
than ``[workspace] heartbeat_timeout``; the next worker's heartbeat or
recovery marks it stopped. On SQLite the lock file keeps one worker, and a
killed one shows as ``dead`` once its heartbeat is older than the timeout (or
as stopped when the next worker starts).

Liveness is a fact of the present: it is judged by the wall clock, not ``--now``.

Each SMTP account's use of its limits (issue #20 part 3) is counted from the
log, so it covers every worker: hand-overs in the last 24 hours against
``max_per_day`` and in the last minute against ``max_per_minute``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from crm_automation.app.access import reading
from crm_automation.app.results import JsonObject, utc_text
from crm_automation.fleet import dead_workers
from crm_automation.send.accounts import accounts_of
from crm_automation.store import location
from crm_automation.workspace import Clock

if TYPE_CHECKING:
    from crm_automation.store.workers import WorkerRow
    from crm_automation.workspace import Workspace

RECENT = timedelta(days=1)  # stopped workers shown: those stopped within this long
SHOWN_STOPPED = 20  # at most this many of them, the latest (cron starting a verb every minute makes 1,440 a day)


class WorkerState(StrEnum):
    """A worker as ``status`` sees it."""

    ALIVE = "alive"  # not stopped, its lock held (PostgreSQL), its heartbeat fresh
    DEAD = "dead"  # not marked stopped, but found dead now (killed, or silent past the timeout)
    STOPPED = "stopped"  # stopped cleanly, or marked stopped when another found it dead


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One worker: where it runs, since when, its last heartbeat and stage, the sends it holds."""

    row: WorkerRow
    state: WorkerState

    def to_json(self) -> JsonObject:
        """``status --json``: one object per worker."""
        r = self.row
        return {"id": r.id, "state": self.state.value, "host": r.host, "pid": r.pid, "started": utc_text(r.started_at),
                "heartbeat": utc_text(r.heartbeat_at), "stage": r.stage, "claimed_sends": r.claimed,
                "stopped": utc_text(r.stopped_at)}


@dataclass(frozen=True, slots=True)
class AccountUse:
    """One SMTP account's hand-overs (all workers, from the log) against its limits (0: no limit)."""

    name: str
    last_day: int
    per_day: int
    last_minute: int
    per_minute: int

    def to_json(self) -> JsonObject:
        """``status --json``: one object per account."""
        return {"account": self.name, "last_24h": self.last_day, "max_per_day": self.per_day,
                "last_minute": self.last_minute, "max_per_minute": self.per_minute}

    def line(self) -> str:
        """``status``'s line for the account."""
        def of(n: int, limit: int) -> str:
            return f"{n}/{limit}" if limit else f"{n} (no limit)"

        return (f"account {self.name}: {of(self.last_day, self.per_day)} in the last 24 h, "
                f"{of(self.last_minute, self.per_minute)} in the last minute")


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """The workers alive and recently stopped, as of ``now``."""

    engine: str
    timeout: timedelta
    now: datetime
    workers: tuple[WorkerStatus, ...]
    accounts: tuple[AccountUse, ...] = ()

    def alive(self) -> list[WorkerStatus]:
        """The workers alive now."""
        return [w for w in self.workers if w.state is WorkerState.ALIVE]

    def to_json(self) -> JsonObject:
        """``status --json``."""
        return {"engine": self.engine, "heartbeat_timeout_seconds": int(self.timeout.total_seconds()),
                "now": utc_text(self.now), "alive": len(self.alive()),
                "workers": [w.to_json() for w in self.workers], "accounts": [a.to_json() for a in self.accounts]}

    def lines(self) -> list[str]:
        """``status``'s text: a summary, then one line a worker (alive first; at most :data:`SHOWN_STOPPED` stopped)."""
        n_alive = len(self.alive())
        out = [f"{n_alive} worker(s) alive, {len(self.workers) - n_alive} stopped or dead in the last "
               f"{int(RECENT.total_seconds() // 3600)} h ({self.engine}; heartbeat_timeout "
               f"{int(self.timeout.total_seconds())}s)"]
        for w in sorted(self.workers, key=lambda w: (w.state is not WorkerState.ALIVE, w.row.started_at)):
            r = w.row
            ago = int((self.now - r.heartbeat_at).total_seconds())
            line = (f"{w.state.value:<8} {r.host} pid {r.pid}  started {utc_text(r.started_at)}  heartbeat "
                    f"{utc_text(r.heartbeat_at)} ({ago} s ago)  stage {r.stage or '-'}  claimed sends {r.claimed}")
            if r.stopped_at is not None:
                line += f"  stopped {utc_text(r.stopped_at)}"
            out.append(f"{line}  [{r.id}]")
        return out + [a.line() for a in self.accounts]


def fleet_status(ws: Workspace, now: datetime | None = None) -> FleetStatus:
    """The workers alive and those stopped within :data:`RECENT`; ``now``: the wall clock unless given."""
    now = now if now is not None else Clock().now()
    timeout = ws.cfg.heartbeat_timeout
    with reading(ws) as store:
        rows = store.workers(stopped_since=now - RECENT)
        stopped = sorted((r for r in rows if r.stopped_at is not None), key=lambda r: r.stopped_at or now,
                         reverse=True)
        rows = [r for r in rows if r.stopped_at is None or r in stopped[:SHOWN_STOPPED]]
        running = [r for r in rows if r.stopped_at is None]
        dead = set(dead_workers(running, store.unlocked_workers([r.id for r in running]), now, timeout, me=""))
        uses = []
        for a in accounts_of(ws.cfg.outbound):
            seen = store.recent_hand_overs(a.name, now)
            uses.append(AccountUse(a.label, seen.day, a.per_day, len(seen.minute), a.per_minute))
    engine = "PostgreSQL" if location.is_postgresql(str(ws.cfg.database)) else "SQLite"
    states = tuple(WorkerStatus(r, WorkerState.STOPPED if r.stopped_at is not None else
                                WorkerState.DEAD if r.id in dead else WorkerState.ALIVE) for r in rows)
    return FleetStatus(engine, timeout, now, states, tuple(uses))
