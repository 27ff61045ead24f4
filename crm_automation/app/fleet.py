"""This process as one of the workers sharing a workspace (issue #20): registered, beating, and its stage locks.

Every process that runs stages (``run``, ``sync``, ``fetch``, ``send``,
``import``, ``rekey``) joins when it takes the workspace
(:class:`crm_automation.app.access.WorkspaceLock`) and leaves when it stops:

- a ``workers`` row at start; a heartbeat thread on its own connection
  writes ``heartbeat_at`` and the stage it is in every third of
  ``[workspace] heartbeat_timeout``; ``stopped_at`` at a clean stop;
- on PostgreSQL, a session of its own (:class:`crm_automation.store.postgres.Member`)
  holding its worker lock for its whole life, and the stage locks
  (:meth:`Membership.exclusive`, a try-lock, never a wait): a stage another
  worker holds is skipped for the cycle, with who has it;
- on SQLite the workspace's lock file keeps one worker: every stage is its
  own, and the rows of earlier processes are a killed worker's, marked
  stopped when this one joins.

The heartbeat also looks for dead workers at each beat (PostgreSQL:
:func:`crm_automation.fleet.reap`), so a query for "a live worker's" rows
stays true without asking every time. A worker that finds its own row
stopped (another took it for dead: its heartbeat was late, a paused VM)
sets its stop flag: its rows may have been resolved already, so it must
not carry on as if they were its own.

Heartbeats are written with the wall clock, not ``--now``: whether a worker
is alive is a fact of the present on every machine (keep their clocks in
step with NTP; a skew must stay well under the timeout).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from crm_automation.errors import CrmError
from crm_automation.fleet import WorkerRecords, new_worker_id, reap
from crm_automation.store import location
from crm_automation.workspace import Clock

if TYPE_CHECKING:
    from crm_automation.store import postgres
    from crm_automation.store.repo import Store
    from crm_automation.workspace import Workspace

log = logging.getLogger("crm_automation.fleet")

# Stopped workers' rows are kept this long (``status`` shows a day of them), then forgotten when a worker joins:
# a workspace run by cron every minute adds 1,440 a day. ``sends.holder`` may still name one: a holder with no row
# is not a live worker, which is all any query asks.
KEEP_STOPPED = timedelta(days=7)


class Membership:
    """This worker among those sharing the log: a :class:`~crm_automation.fleet.Fleet` with a heartbeat.

    ``stop``: the worker's stop flag, set when this worker finds itself
    taken for dead. Use as a context manager (join, then leave).
    """

    def __init__(self, ws: Workspace, stop: threading.Event | None = None) -> None:
        self.ws = ws
        self.stop = stop if stop is not None else threading.Event()
        self._id = new_worker_id()
        self.timeout = ws.cfg.heartbeat_timeout
        self.alone = not location.is_postgresql(str(ws.cfg.database))  # SQLite: the lock file keeps one worker
        self.member: postgres.Member | None = None
        self._stage: str | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._clock = Clock()  # the wall clock (see the module docstring)

    @property
    def worker_id(self) -> str:
        """This worker's name (``workers.id``, ``sends.holder``)."""
        return self._id

    # ------------------------------------------------------------------ joining and leaving
    def __enter__(self) -> Membership:
        """Join: (PostgreSQL) the session and its worker lock, then the row, written by the heartbeat thread.

        The thread's one connection registers, beats and records the stop:
        a stage verb opens the log once more, not three times (each SQLite
        open and close costs a checkpoint; issue #20 measured ~60 ms a verb
        with separate connections on this machine).
        """
        if not self.alone:
            from crm_automation.store import postgres

            self.member = postgres.Member(str(self.ws.cfg.database), self.ws.cfg.database_password, self._id)
            self.member.join()  # the lock before the row: a row seen by others always has its lock held
        joined = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._live, args=(joined, failed), name="crm-heartbeat", daemon=True)
        self._thread.start()
        joined.wait()
        if failed:
            self._thread.join()
            self._leave_session()
            raise failed[0]
        return self

    def __exit__(self, *exc: object) -> None:
        """Leave: the thread records the stop and ends; then the session (and every lock it held) goes."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._leave_session()

    def _register(self, store: Store) -> None:
        now = self._clock.now()
        with store.transaction():  # one commit
            store.register_worker(self._id, socket.gethostname(), os.getpid(), now)
            if self.alone:
                reap(store, now, self.timeout, me=self._id, alone=True)
            store.forget_workers(now - KEEP_STOPPED)

    def _open_existing(self) -> Store | None:
        """The log, but never a new SQLite file where it was deleted (the worker stops on that; issue #9)."""
        db = self.ws.cfg.database
        if isinstance(db, Path) and not db.exists():
            return None
        return self.ws.open_store()

    def _leave_session(self) -> None:
        if self.member is not None:
            self.member.leave()
            self.member = None

    # ------------------------------------------------------------------ the heartbeat
    def _live(self, joined: threading.Event, failed: list[BaseException]) -> None:
        """The heartbeat thread: register (the joining thread waits), beat until halted, record the stop."""
        try:
            opened = self.ws.open_store()
            try:
                self._register(opened)
            except BaseException:
                opened.close()
                raise
        except BaseException as e:  # noqa: BLE001 - handed to the joining thread, which raises it
            failed.append(e)
            joined.set()
            return
        joined.set()
        store = self._beat_loop(opened)
        try:
            if store is None:
                store = self._open_existing()
            if store is not None:
                store.stop_workers([self._id], self._clock.now())
        except CrmError as e:  # the log is gone: others find this worker dead by its lock or its heartbeat
            log.warning("worker %s: could not record its stop: %s", self._id, e)
        finally:
            if store is not None:
                with suppress(CrmError):
                    store.close()

    def _beat_loop(self, store: Store | None) -> Store | None:
        """Every third of the timeout: the heartbeat, then (PostgreSQL) the dead found; the connection left."""
        interval = max(self.timeout.total_seconds() / 3, 0.5)
        while not self._halt.wait(interval):
            try:
                if store is None:
                    store = self._open_existing()
                if store is not None:
                    self._beat(store)
            except CrmError as e:  # the server or the disk went away: the next beat tries again
                log.warning("worker %s: heartbeat not recorded: %s", self._id, e)
                if store is not None:
                    with suppress(CrmError):
                        store.close()
                store = None
        return store

    def _beat(self, store: Store) -> None:
        now = self._clock.now()
        if not store.beat(self._id, now, self._stage):
            log.error("worker %s was taken for dead by another worker (its heartbeat was late by more than "
                      "[workspace] heartbeat_timeout = %s); stopping", self._id, self.timeout)
            self.stop.set()
            self._halt.set()
            return
        if not self.alone:
            reap(store, now, self.timeout, me=self._id)

    # ------------------------------------------------------------------ the Fleet protocol
    def doing(self, stage: str | None) -> None:
        """The stage this worker is in now (or was last): written at the next heartbeat."""
        self._stage = stage

    def exclusive(self, stage: str) -> AbstractContextManager[str | None]:
        """Hold ``stage`` for the block (PostgreSQL: a session try-lock); None when granted, else who holds it."""
        return self._exclusive(stage)

    @contextmanager
    def _exclusive(self, stage: str) -> Iterator[str | None]:
        if self.member is None:  # SQLite: the lock file already keeps every other worker out
            yield None
            return
        if not self.member.try_stage(stage):
            holder = self.member.stage_holder(stage)
            yield f"held by worker {holder}" if holder else "held by another worker"
            return
        try:
            yield None
        finally:
            with suppress(CrmError):  # a session gone has let go of every lock already
                self.member.release_stage(stage)

    def reap(self, store: WorkerRecords) -> list[str]:
        """Mark the workers found dead stopped now (before recovery); which were."""
        return reap(store, self._clock.now(), self.timeout, me=self._id, alone=self.alone)
