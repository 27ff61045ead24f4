"""How a use case reaches the log: read-only beside a running worker, or under the workspace's lock to write.

Why a lock for writes (issue #9/#17): one worker per workspace, and an
admin's change (a suppression, a requeue) must not land while a send pass
plans under it. Reads take no lock and open the log read-only, so
``report`` or a web page works while the worker runs and can write nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from crm_automation.errors import LockedError, StorageError

if TYPE_CHECKING:
    from crm_automation.store.repo import Store
    from crm_automation.workspace import Workspace


class WorkspaceLock:
    """One worker per workspace: a file lock beside the log (filelock), held for the whole command."""

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
    """The log opened for writing under the workspace's lock (LockedError while a worker runs), closed afterwards."""
    with WorkspaceLock(ws):
        store = ws.open_store()
        try:
            yield store
        finally:
            store.close()
