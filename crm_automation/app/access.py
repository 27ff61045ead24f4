"""How a use case reaches the log: read-only, or for one short write; and the lock that keeps the stages single.

Two kinds of writer share the log (issue #19):

- The stages (``run``, ``sync``, ``fetch``, ``send``, ``import``): each
  holds :class:`WorkspaceLock` for its whole life. On SQLite that is one
  worker per workspace (a file lock beside the log; a second one stops with
  :class:`LockedError`); on PostgreSQL several share it, each stage that
  must run alone taking its own lock (issue #20, :mod:`crm_automation.app.fleet`).
- Short writes of the application layer (``suppress``, ``unsuppress``,
  ``requeue``, an unsubscribe link; the CLI and ``serve``): they take no
  workspace lock and go through *while a worker runs*. Each is one short
  transaction (``BEGIN IMMEDIATE``) on its own connection; SQLite in WAL mode
  lets one writer in at a time, and a writer that finds the log busy waits up
  to :data:`~crm_automation.store.connection.BUSY_TIMEOUT` for the worker's
  transaction to end. The worker's longest (queueing a broadcast to 100,000
  customers) takes about a second, so the wait is invisible; a log that stays
  busy past it (a SQLite browser holding a transaction open) gives a
  :class:`LockedError` saying nothing was changed.

Why a short write may land while a send pass runs: the pass checks the
suppression list again at the moment each message is handed over, in the
transaction that marks it ``sending`` (``send/dispatch.py``), so a suppression
or unsubscribe recorded a second before is honoured; a requeued send waits
for the next pass (the pass read its queue at its start).

Reads take no lock and open the log read-only, so ``report`` or a web page
works while the worker runs and can write nothing.

A long-lived process may keep its write connection open between writes
(:class:`KeptWriter`: ``serve``'s one-click unsubscribes, issue #19); it
reopens the log when the file it opened was deleted or replaced.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from crm_automation.errors import CrmError, LockedError, LogBusyError, StorageError
from crm_automation.store import connection, location
from crm_automation.store.repo import Store

if TYPE_CHECKING:
    from crm_automation.workspace import Workspace

log = logging.getLogger("crm_automation.app")


class WorkspaceLock:
    """A stage verb's hold on its workspace for its whole life: one worker (SQLite) or one of several (PostgreSQL).

    SQLite: a file lock beside the log (filelock): a second worker stops
    with :class:`LockedError`. PostgreSQL (issue #20, stage 2): no file and
    no exclusive lock; any number of workers share the workspace, and each
    stage that must run in one worker at a time asks
    :meth:`~crm_automation.app.fleet.Membership.exclusive` instead. On both,
    the holder joins the fleet (:attr:`fleet`: its ``workers`` row, its
    heartbeat, on PostgreSQL its session locks) and leaves it on exit.
    ``stop``: the worker's stop flag, set if this worker is taken for dead.
    ``join=False``: the lock file only, no ``workers`` row: ``db copy``
    keeps the workers out of the log it copies, and must not write to it.
    """

    def __init__(self, ws: Workspace, stop: threading.Event | None = None, *, join: bool = True) -> None:
        from crm_automation.app.fleet import Membership

        db = ws.cfg.database
        self.join = join
        self.fleet = Membership(ws, stop)
        self.lock: FileLock | None = None
        if isinstance(db, str):
            self.path: Path | str = location.shown(db)
            return
        self.path = Path(str(db) + ".lock")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{db.parent}: cannot create the folder for the activity log: "
                               f"{e.strerror}", hint="create it, or make its parent writable, or change "
                                                     "[workspace] database") from None
        self.lock = FileLock(str(self.path))

    def __enter__(self) -> WorkspaceLock:
        if self.lock is not None:
            self._lock_file(self.lock)
        if not self.join:
            return self
        try:
            self.fleet.__enter__()
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise
        return self

    def _lock_file(self, lock: FileLock) -> None:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise LockedError(f"{self.path}: another crm-automation worker is running on this workspace",
                              hint="wait for it to finish, or stop it (Ctrl-C / SIGTERM)") from None
        except OSError as e:
            raise StorageError(f"{self.path}: cannot create the workspace lock: {e.strerror}",
                               hint=f"make {Path(self.path).parent} writable by the user running crm-automation"
                               ) from None

    def __exit__(self, *exc: object) -> None:
        try:
            if self.join:
                self.fleet.__exit__(*exc)
        finally:
            if self.lock is not None:
                self.lock.release()


@contextmanager
def reading(ws: Workspace) -> Iterator[Store]:
    """The log opened read-only (no lock; a log not created yet reads as an empty one), closed afterwards."""
    store = ws.open_store(read_only=True)
    try:
        yield store
    finally:
        store.close()


class KeptWriter:
    """One write connection kept open by a long-lived process (``serve``) for its short writes, one at a time.

    Why (issue #19): opening the log (connect, WAL and cache pragmas, the
    schema check) took ~1 ms of the ~1.7 ms of a one-click unsubscribe; a
    process that writes all day keeps one connection instead. It is used by
    one write at a time (a lock; any thread, as the web app's threadpool
    runs them), and it follows the file as a fresh connection would: when
    the path no longer names the file it opened (the log deleted, or
    replaced by a restored backup), it is closed and the log opened again,
    so a write never lands in a file nobody reads. After a failed write it
    is closed too, and the next write opens the log afresh.
    """

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._store: Store | None = None
        self._lock = threading.Lock()

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The kept connection (opened or re-opened as needed), for one write."""
        with self._lock:
            if self._store is not None and not self._store.same_file():
                self._drop()
            if self._store is None:
                self._store = Store.open(self.ws.cfg.database, any_thread=True,
                                         password=self.ws.cfg.database_password)
            try:
                yield self._store
            except LogBusyError:  # nothing went wrong with the connection: the log was busy, the unit rolled back
                raise
            except BaseException:
                self._drop()
                raise

    @property
    def is_open(self) -> bool:
        """Whether the connection is open now."""
        return self._store is not None

    def warm(self) -> None:
        """Open the kept connection now (``serve`` at start: the first POST finds it open).

        A SQLite log only when its file exists (``serve`` started before the
        first run creates no log); a PostgreSQL log always, but a server that
        does not answer yet does not stop ``serve`` from starting: the
        first write tries again and answers for itself.
        """
        database = str(self.ws.cfg.database)
        if on_this_machine(self.ws) and not Path(database).exists():
            return
        try:
            with self.store():
                pass
        except CrmError as e:
            log.warning("%s", e)

    def close(self) -> None:
        """Close the connection (the next write opens it again)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


@contextmanager
def writing(ws: Workspace, kept: KeptWriter | None = None, *, wait: bool = True) -> Iterator[Store]:
    """The log opened for a short write beside a running worker (no workspace lock), closed afterwards.

    Each write of the caller is its own short transaction; one that finds the
    log busy longer than the busy timeout raises :class:`LockedError` (exit 2:
    that transaction was rolled back, nothing of it written). With ``kept``
    (a long-lived process's :class:`KeptWriter`), its connection is used and
    left open. ``wait=False`` (with ``kept`` only): a busy log raises
    :class:`LogBusyError` at once, and the caller tries again its own way
    (``serve``'s event loop, :meth:`~crm_automation.store.connection.Connection.not_waiting`).
    """
    if not wait:
        if kept is None:
            raise ValueError("writing(wait=False) needs a kept connection")
        with kept.store() as store, store.not_waiting():
            yield store
        return
    try:
        if kept is not None:
            with kept.store() as store:
                yield store
            return
        store = ws.open_store()
    except LogBusyError as e:
        raise busy(ws) from e
    try:
        yield store
    except LogBusyError as e:
        raise busy(ws) from e
    finally:
        store.close()


def on_this_machine(ws: Workspace) -> bool:
    """Whether the workspace's log is a file on this machine (SQLite), not a server (PostgreSQL, issue #20)."""
    return not location.is_postgresql(str(ws.cfg.database))


def busy_wait() -> tuple[float, float]:
    """How long a write waits for a busy log, and how often it tries again (seconds; read at call time)."""
    return connection.BUSY_TIMEOUT, connection.BUSY_POLL


def busy(ws: Workspace) -> LockedError:
    """The error of a write that waited the whole busy timeout (exit 2: nothing was changed)."""
    return LockedError(f"{ws.cfg.database}: the activity log stayed busy (another program kept a write transaction "
                       f"open for more than {connection.BUSY_TIMEOUT:g} s); nothing was changed",
                       hint="try again in a minute; if it keeps happening, close programs that hold the log open "
                            "for writing (a SQLite browser with unsaved changes)")
