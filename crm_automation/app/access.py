"""How a use case reaches the log: read-only, or for one short write; and the lock that keeps the stages single.

Two kinds of writer share the log (issue #19):

- The stages (``run``, ``sync``, ``fetch``, ``send``, ``import``): one worker
  per workspace. Their state between transactions (the sheet's fingerprint,
  the mailbox cursor, the pending ``sent`` record, the pacing) assumes no
  second worker, so each holds :class:`WorkspaceLock` (a file lock beside the
  log) for its whole life; a second one stops with :class:`LockedError`.
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
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from crm_automation.errors import LockedError, LogBusyError, StorageError
from crm_automation.store import connection

if TYPE_CHECKING:
    from crm_automation.store.repo import Store
    from crm_automation.workspace import Workspace


class WorkspaceLock:
    """One worker per workspace: a file lock beside the log (filelock), held by a stage verb for its whole life."""

    def __init__(self, ws: Workspace) -> None:
        self.path = Path(str(ws.cfg.database) + ".lock")
        try:
            ws.cfg.database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"{ws.cfg.database.parent}: cannot create the folder for the activity log: "
                               f"{e.strerror}", hint="create it, or make its parent writable, or change "
                                                     "[workspace] database") from None
        self.lock = FileLock(str(self.path))

    def __enter__(self) -> WorkspaceLock:
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            raise LockedError(f"{self.path}: another crm-automation worker is running on this workspace",
                              hint="wait for it to finish, or stop it (Ctrl-C / SIGTERM)") from None
        except OSError as e:
            raise StorageError(f"{self.path}: cannot create the workspace lock: {e.strerror}",
                               hint=f"make {self.path.parent} writable by the user running crm-automation") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


@contextmanager
def reading(ws: Workspace) -> Iterator[Store]:
    """The log opened read-only (no lock; a log not created yet reads as an empty one), closed afterwards."""
    store = ws.open_store(read_only=True)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def writing(ws: Workspace) -> Iterator[Store]:
    """The log opened for a short write beside a running worker (no workspace lock), closed afterwards.

    Each write of the caller is its own short transaction; one that finds the
    log busy longer than the busy timeout raises :class:`LockedError` (exit 2:
    that transaction was rolled back, nothing of it written).
    """
    try:
        store = ws.open_store()
    except LogBusyError as e:
        raise _busy(ws) from e
    try:
        yield store
    except LogBusyError as e:
        raise _busy(ws) from e
    finally:
        store.close()


def _busy(ws: Workspace) -> LockedError:
    return LockedError(f"{ws.cfg.database}: the activity log stayed busy (another program kept a write transaction "
                       f"open for more than {connection.BUSY_TIMEOUT:g} s); nothing was changed",
                       hint="try again in a minute; if it keeps happening, close programs that hold the log open "
                            "for writing (a SQLite browser with unsaved changes)")
