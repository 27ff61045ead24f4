"""The workers sharing one activity log, as a stage sees them: who this worker is, and which stages are its own.

Issue #20: on PostgreSQL several workers (``run`` or the stage verbs, on one
machine or several) share one workspace. Sends are *claimed* row by row, so
the send loop needs only this worker's name (``sends.holder``); a stage that
must run in one worker at a time (sync, write-back, each mailbox folder's
fetch, the send pass's recovery and planning) asks :meth:`Fleet.exclusive`
first and is skipped for the cycle when another worker has it.

A SQLite workspace has one worker (its lock file): :class:`Solo` grants
every stage. The PostgreSQL fleet (advisory locks, heartbeats) implements
the same protocol.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


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


class Solo:
    """The one worker of a workspace whose lock already keeps every other out (SQLite): every stage is its own."""

    def __init__(self, worker_id: str | None = None) -> None:
        self._id = worker_id or new_worker_id()

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
