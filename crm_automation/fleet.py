"""The workers sharing one activity log, as a stage sees them: who this worker is, and which stages are its own.

Issue #20: on PostgreSQL several workers (``run`` or the stage verbs, on one
machine or several) share one workspace. Sends are *claimed* row by row, so
the send loop needs only this worker's name (``sends.holder``); a stage that
must run in one worker at a time (sync, write-back, each mailbox folder's
fetch, the send pass's recovery and planning) asks :meth:`Fleet.exclusive`
first and is skipped for the cycle when another worker has it.

A SQLite workspace has one worker (its lock file): :class:`Solo` grants
every stage. The PostgreSQL fleet (advisory locks, heartbeats:
:class:`crm_automation.app.fleet.Membership`) implements the same protocol.

When a worker is dead (issue #20, rule 1) is decided here, once
(:func:`dead_workers`), and applied by :func:`reap`: the store marks the dead
``stopped_at``, so a live worker is simply one whose row is not stopped.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Protocol

from crm_automation.errors import LockedError

DEFAULT_HEARTBEAT_TIMEOUT = timedelta(seconds=60)  # [workspace] heartbeat_timeout's default (config.py)


class WorkerRecord(Protocol):
    """What the rule reads of a worker's row (``store.workers.WorkerRow``; this module sits below the store)."""

    @property
    def id(self) -> str:
        """The worker's name."""
        ...

    @property
    def heartbeat_at(self) -> datetime:
        """Its last heartbeat."""
        ...

    @property
    def stopped_at(self) -> datetime | None:
        """When it stopped (None: not marked stopped)."""
        ...


class WorkerRecords(Protocol):
    """What :func:`reap` asks of the log (the store's ``Workers`` part)."""

    def workers(self) -> Sequence[WorkerRecord]:
        """The workers not marked stopped."""
        ...

    def unlocked_workers(self, ids: Iterable[str]) -> set[str]:
        """Of these, those whose session lock is free (PostgreSQL)."""
        ...

    def stop_workers(self, ids: Iterable[str], now: datetime) -> list[str]:
        """Mark these stopped; which were running."""
        ...


def new_worker_id() -> str:
    """A name no other worker has, now or later: ``host/pid/random`` (a restarted worker is a new one)."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class Fleet(Protocol):
    """This worker among the workers sharing the log."""

    @property
    def worker_id(self) -> str:
        """This worker's name (``workers.id``, ``sends.holder``)."""
        ...

    def exclusive(self, stage: str) -> AbstractContextManager[str | None]:
        """Hold ``stage`` for the ``with`` block: yields None when this worker has it, else who has it (skip)."""
        ...

    def doing(self, stage: str | None) -> None:
        """The stage this worker is in now (or was last); its heartbeat records it for ``status``."""
        ...

    def reap(self, store: WorkerRecords) -> list[str]:
        """Mark the workers found dead stopped (before recovery takes their ``sending`` rows); which were."""
        ...


def dead_workers(rows: Iterable[WorkerRecord], unlocked: set[str], now: datetime, timeout: timedelta, *,
                 me: str, alone: bool = False) -> list[str]:
    """Which running workers are dead (issue #20, rule 1): this worker never; the rest when any of these holds.

    - ``alone``: this worker holds the workspace's lock file (SQLite), so no
      other can be running: every other row is a killed process's;
    - its session lock is free (``unlocked``, PostgreSQL): its process is
      gone, as a killed process's connection is closed by its kernel at once;
    - its last heartbeat is older than ``timeout``: a machine that vanished
      (its TCP session may linger on the server for hours).
    """
    cutoff = now - timeout
    return [r.id for r in rows if r.id != me and r.stopped_at is None
            and (alone or r.id in unlocked or r.heartbeat_at < cutoff)]


def reap(store: WorkerRecords, now: datetime, timeout: timedelta, *, me: str, alone: bool = False) -> list[str]:
    """Find the dead workers and mark them stopped; which were (applied in one transaction)."""
    rows = [r for r in store.workers() if r.id != me]
    unlocked = set() if alone else store.unlocked_workers([r.id for r in rows])
    return store.stop_workers(dead_workers(rows, unlocked, now, timeout, me=me, alone=alone), now)


STOP_WORKERS_FIRST = ("stop the workers (`systemctl stop 'crm-automation@*'`, or Ctrl-C), run it, then start them "
                      "again; `crm-automation status` lists them")


@contextmanager
def holding(fleet: Fleet, stages: Sequence[str], what: str) -> Iterator[None]:
    """Hold every one of ``stages`` for the block, or refuse ``what`` (:class:`LockedError`, nothing done).

    For the verbs that change what those stages read or write and must not
    run beside them (issue #20): ``import`` writes the sheet (``sync`` and
    ``writeback`` read and write it), ``rekey`` rewrites every key of the
    log. On a SQLite workspace the lock file already keeps every other
    worker out, and every stage is granted.
    """
    with ExitStack() as held:
        for stage in stages:
            holder = held.enter_context(fleet.exclusive(stage))
            if holder is not None:
                raise LockedError(f"{what} refused: the {stage} stage is {holder}; nothing was changed",
                                  hint=STOP_WORKERS_FIRST)
        yield


def others_alive(fleet: Fleet, store: WorkerRecords) -> list[str]:
    """The other workers alive now (the dead reaped first): who must stop before a verb that needs the log alone."""
    fleet.reap(store)
    return [r.id for r in store.workers() if r.id != fleet.worker_id]


class Solo:
    """The one worker of a workspace whose lock already keeps every other out (SQLite): every stage is its own."""

    def __init__(self, worker_id: str | None = None, *, alone: bool = False) -> None:
        self._id = worker_id or new_worker_id()
        self.alone = alone  # the log is a SQLite file: nobody else can be running (see reap)

    @property
    def worker_id(self) -> str:
        """This worker's name."""
        return self._id

    @contextmanager
    def _granted(self) -> Iterator[str | None]:
        yield None

    def exclusive(self, stage: str) -> AbstractContextManager[str | None]:
        """Always granted: nobody else can be running."""
        return self._granted()

    def doing(self, stage: str | None) -> None:
        """Nothing records it: a Solo worker has no heartbeat."""

    def reap(self, store: WorkerRecords) -> list[str]:
        """The rule with the default timeout; ``alone`` (a SQLite log): every other running worker is dead.

        A worker a library caller builds without joining the fleet (tests,
        one-off scripts) is Solo. On SQLite it is the one worker as before
        (recovery resolved every ``sending`` row); on PostgreSQL it takes
        another worker for dead only by the rule. The wall clock: heartbeats
        are written with it, and liveness is a fact of the present.
        """
        return reap(store, datetime.now(UTC), DEFAULT_HEARTBEAT_TIMEOUT, me=self._id, alone=self.alone)
