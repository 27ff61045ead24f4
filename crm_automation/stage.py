"""What every stage shares: its result, its record in ``runs``, progress, and the stop flag.

A stage (sync, fetch, send, write-back, recover) is one unit of work the
worker orders. Each is recorded in ``runs`` by :func:`recorded`; a service
that cannot be reached stops that stage (``StageResult.error``), not the
worker, and the next pass retries. A per-item failure (a bad row, message or
send) is a ``problem``: recorded, and the stage carries on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from crm_automation.errors import CrmError, ServiceError, StorageError
from crm_automation.fleet import Fleet, Solo
from crm_automation.store.repo import Store
from crm_automation.workspace import Clock

log = logging.getLogger("crm_automation")


class Bar(Protocol):
    """One progress display."""

    def advance(self, n: int = 1) -> None:
        """``n`` more items done."""
        ...

    def close(self) -> None:
        """The work is over."""
        ...


class Progress(Protocol):
    """Where long stages report progress (a rich bar on a terminal, log lines otherwise)."""

    def __call__(self, desc: str, total: int | None) -> Bar:
        """Start a display for ``desc`` (``total`` items, or unknown)."""
        ...


class _NoBar:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(desc: str, total: int | None) -> Bar:
    """The default: no progress display."""
    return _NoBar()


@dataclass
class StageResult:
    """How one stage went. ``problems`` are per-item failures (exit 1); ``error`` a stopped stage (exit 3).

    ``notes`` are shown like problems but fail nothing: e.g. sheet cells blanked in rows that were kept (issue #11).
    """

    job: str
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    error: CrmError | None = None
    details: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problems and no error."""
        return self.error is None and not self.problems

    def exit_code(self) -> int:
        """SPEC §7: 0 done; 1 some items failed; 3 a service could not be reached (2 raised earlier)."""
        if self.error is not None:
            return self.error.exit_code
        return 1 if self.problems else 0

    def to_json(self) -> dict[str, Any]:
        """Machine-readable form for ``--json``."""
        out: dict[str, Any] = {"job": self.job, "ok": self.ok, "stats": self.stats, "problems": self.problems}
        if self.error is not None:
            out["error"] = str(self.error)
        if self.details:
            out["details"] = self.details
        if self.notes:
            out["notes"] = self.notes
        return out


@dataclass(frozen=True, slots=True)
class StageContext:
    """What a stage needs besides the workspace: the log, the clock, progress, the stop flag, and its fleet.

    ``fleet``: this worker among those sharing the log (issue #20): its
    name, and which stages it may run now (:mod:`crm_automation.fleet`).
    """

    store: Store
    clock: Clock
    progress: Progress = no_progress
    stop: threading.Event = field(default_factory=threading.Event)
    fleet: Fleet = field(default_factory=Solo)


def skipped(res: StageResult, stage: str, holder: str) -> None:
    """A stage another worker holds this cycle (issue #20, rule 2): nothing done here, and who has it (exit 0)."""
    note = f"{stage}: skipped this cycle, {holder}"
    res.stats.setdefault("note", f"skipped: {holder}")
    res.notes.append(note)
    log.info("%s", note)


@contextmanager
def recorded(ctx: StageContext, job: str, *, record: bool = True) -> Iterator[StageResult]:
    """Record one stage in ``runs``; a service that fails stops the stage (``res.error``), not the worker.

    The log file is checked first (deleted or replaced under the worker:
    ConfigError, the worker stops). A log that cannot be written
    (StorageError) cannot record the stage either: that is raised. A log
    whose server went away (PostgreSQL, a ServiceError) stops the stage as
    any other service does, even when the stage's record cannot be finished.
    ``record=False`` (dry runs, issue #17): the same handling, and nothing
    written, so the stage can run on a read-only log beside a worker.
    """
    ctx.store.check_file()
    res = StageResult(job)
    run_id = ctx.store.start_run(job, ctx.clock.now()) if record else None
    ctx.fleet.doing(job)  # the heartbeat records it: the stage it is in, or last was (`status`, issue #20)
    try:
        yield res
    except ServiceError as e:
        res.error = e
        log.warning("%s stopped: %s", job, e)
    finally:
        if run_id is not None:
            try:
                ctx.store.finish_run(run_id, ctx.clock.now(), ok=res.ok, stats=res.stats,
                                     error=str(res.error) if res.error else ("; ".join(res.problems[:5]) or None))
            except StorageError:  # the stage's own error already says the log cannot be written
                pass
            except ServiceError as e:  # a log's server gone (issue #20): the stage stops, the worker carries on
                if res.error is None:
                    res.error = e


def held(ctx: StageContext, job: str, error: CrmError, note: str, *, record: bool = True) -> StageResult:
    """A stage that did not run, recorded in ``runs`` with why (issue #17: sending waits for a fixed sheet).

    The worker holds a stage when something it depends on failed or cannot
    be loaded (the fetch, the sync, an edited mapping); ``error`` says what
    and decides the exit status; ``note`` is the short reason in the stats.
    ``record=False``: a dry run's hold, shown and not written (the log is read-only).
    """
    with recorded(ctx, job, record=record) as res:
        res.stats = {"note": f"held: {note}"}
        res.error = error
    return res


class LazyIndex(dict[str, str]):
    """address -> customer key, loaded on first use: a poll that finds no mail never decodes the customers."""

    def __init__(self, load: Callable[[], dict[str, str]]) -> None:
        super().__init__()
        self._load: Callable[[], dict[str, str]] | None = load

    def _ensure(self) -> None:
        if self._load is not None:
            load, self._load = self._load, None
            self.update(load())

    def get(self, key: str, default: Any = None) -> Any:  # noqa: D102 - dict.get, loading first
        self._ensure()
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._ensure()
        return super().__contains__(key)

    # Iterating, counting and indexing are uses too: frozenset(index) once gave an empty set (issue #13).
    def __iter__(self) -> Iterator[str]:
        self._ensure()
        return super().__iter__()

    def __len__(self) -> int:
        self._ensure()
        return super().__len__()

    def __getitem__(self, key: str) -> str:
        self._ensure()
        return super().__getitem__(key)


def address_index(store: Store, email_fields: list[str]) -> LazyIndex:
    """The customers' addresses (every mapped email field but ``owner``), loaded on first use."""
    return LazyIndex(lambda: store.keys_by_email(email_fields))
