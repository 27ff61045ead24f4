"""``db copy --to postgresql://...``: a workspace's SQLite log copied into PostgreSQL (issue #20, item 4).

Why a copy of the whole log, not a fresh start on the server: the log is
what makes every email go out once (SPEC §10): the ``sends`` already made,
when each campaign was first seen, the mailbox cursors, the suppressions.
A workspace switched to an empty PostgreSQL database would mail everyone
again; switched to a copy of its log, it carries on where it stopped.

The rules, each checked before anything is written:

- the source is the workspace's SQLite file (a workspace already on
  PostgreSQL has nothing to copy: refused), and no worker may be running
  on it: the copy takes the workspace lock for its whole length, so
  nothing is written to the file while it is read, and a worker still
  running is refused with the advice to stop it first;
- the source must be the log this workspace's marker names (as a worker
  would check it, ``store/identity.py``), else the copy would carry a
  replaced log past that check;
- the target's URL carries no password (``config.database_url_problem``);
  the password comes from ``--password-env`` (the variable's name), or
  libpq's ``PGPASSWORD`` / ``~/.pgpass`` / a client certificate;
- the target may be an empty database, or one holding an earlier copy of
  this very log that nobody has written since: then an unchanged log
  copies nothing ("up to date") and a changed one is copied again whole.
  A database holding another log (another ``log_id`` or workspace marker),
  or this log written by a worker after the copy, is refused: copying over
  it would lose what that log recorded (``meta.copied_from``, every row's
  ``xmin``: see ``store/copy.py``).

The copy itself is one transaction (``store/copy.py``): killed half-way, it
leaves the target as it was, and running it again completes it.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from crm_automation.app.access import WorkspaceLock
from crm_automation.errors import ConfigError, LockedError
from crm_automation.store import location
from crm_automation.store.identity import Marker, guard, marker_text
from crm_automation.store.repo import Store

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from crm_automation.app.results import JsonObject
    from crm_automation.stage import Progress
    from crm_automation.store.copy import Source, Table, Target, TargetState
    from crm_automation.workspace import Clock, Workspace

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
STOP_FIRST = ("stop the worker first (systemctl stop, or Ctrl-C in its terminal; every `run`, `sync`, `fetch` and "
              "`send` of this workspace), then copy: the copy must be of a log nobody writes")


class Outcome(StrEnum):
    """What a copy did (or, with ``--dry-run``, would do)."""

    COPIED = "copied"  # the target held no log yet
    COPIED_AGAIN = "copied_again"  # the target held an earlier copy of this log, unwritten since; the log changed
    UP_TO_DATE = "up_to_date"  # the target holds this log as it is: nothing written


@dataclass(frozen=True, slots=True)
class TableCopy:
    """One table: its rows in the SQLite log, and how many this run wrote to PostgreSQL."""

    table: str
    rows: int
    copied: int


@dataclass(frozen=True, slots=True)
class CopyResult:
    """``db copy``'s answer."""

    source: str
    target: str  # the URL as messages show it (never a password)
    outcome: Outcome
    dry_run: bool
    tables: tuple[TableCopy, ...]
    seconds: float

    @property
    def copied(self) -> int:
        """Rows written (or that would be)."""
        return sum(t.copied for t in self.tables)

    def to_json(self) -> JsonObject:
        """``db copy --json``."""
        return {"source": self.source, "target": self.target, "outcome": self.outcome.value,
                "dry_run": self.dry_run, "copied": self.copied, "seconds": round(self.seconds, 2),
                "tables": [{"table": t.table, "rows": t.rows, "copied": t.copied} for t in self.tables]}


def copy_log(ws: Workspace, to: str, *, clock: Clock, progress: Progress, password_env: str | None = None,
             dry_run: bool = False, accept_new: bool = False) -> CopyResult:
    """Copy the workspace's SQLite log into the PostgreSQL database ``to`` (see the module docstring)."""
    path = _source_path(ws)
    _check_url(to)
    password = _password(password_env)
    started = time.monotonic()
    if dry_run:  # reads only: no lock, nothing written to either side (as every dry run, issue #17)
        _check_source(ws, path, accept_new, write=False)
        return _dry_run(path, to, password, started)
    lock = WorkspaceLock(ws, join=False)  # the log being copied gets no workers row
    try:
        lock.__enter__()
    except LockedError as e:
        raise LockedError(f"{e.args[0]}: db copy refused", hint=STOP_FIRST) from None
    try:
        _check_source(ws, path, accept_new, write=True)
        with _target(to, password) as target:
            return _copy(path, target, to, clock, progress, started)
    finally:
        lock.__exit__()


def _source_path(ws: Workspace) -> Path:
    db = ws.cfg.database
    if isinstance(db, str):
        raise ConfigError(f"{location.shown(db)}: this workspace's log is already on PostgreSQL; db copy copies a "
                          "workspace's SQLite log into PostgreSQL",
                          hint="run db copy with the config of the workspace whose [workspace] database is still the "
                               "SQLite file")
    if not db.is_file():
        raise ConfigError(f"{db}: there is no activity log to copy yet (the first run creates it)",
                          hint="a workspace that never ran can point [workspace] database at PostgreSQL directly")
    return db


def _check_url(to: str) -> None:
    from crm_automation.config import database_url_problem

    problem = database_url_problem(to)
    if problem is None and not location.is_postgresql(to):
        problem = f"is \"{to}\", a path (expected the PostgreSQL database's URL, postgresql://user@host:5432/crm)"
    if problem is not None:
        raise ConfigError(f"db copy --to {problem}")


def _password(name: str | None) -> str | None:
    """PostgreSQL's password from the variable ``--password-env`` names (None: libpq's own sources apply)."""
    if name is None:
        return None
    if not _ENV_NAME.fullmatch(name):
        raise ConfigError("db copy --password-env is not the name of an environment variable (expected a name such "
                          "as CRM_DB_PASSWORD); the value is not shown because it may be the password itself")
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"db copy --password-env names ${name}, which is not set in the environment",
                          hint=f"export {name}=... before running (the value is never shown)")
    return value


def _check_source(ws: Workspace, path: Path, accept_new: bool, *, write: bool) -> None:
    """The file must be the log this workspace's marker names (a worker would refuse another); upgraded if older."""
    store = Store.open(path) if write else Store.open_readonly(path)
    try:
        guard(store, ws.cfg, accept_new=accept_new, write=False)
    finally:
        store.close()


@contextmanager
def _target(url: str, password: str | None) -> Iterator[Target]:
    """The target opened (migrated first), with no PostgreSQL worker alive on it: nobody writes during the copy.

    A worker on the target holds its worker lock for its whole life
    (issue #20, ``store/postgres.Member``); one whose lock is taken is alive.
    """
    from crm_automation.store import postgres
    from crm_automation.store.copy import Target

    conn = postgres.connect(url, password=password)
    try:
        ids = [str(r[0]) for r in conn.execute("SELECT id FROM workers WHERE stopped_at IS NULL")]
        alive = sorted(set(ids) - postgres.unlocked_workers(conn, ids))
        if alive:
            raise LockedError(f"{location.shown(url)}: a crm-automation worker is running on this PostgreSQL log "
                              f"({', '.join(alive)}): db copy refused", hint=STOP_FIRST)
        yield Target(conn)
    finally:
        conn.close()


def _copy(path: Path, target: Target, to: str, clock: Clock, progress: Progress, started: float) -> CopyResult:
    from crm_automation.store.copy import MARKER, Source, copy_all

    source = Source(path)
    try:
        tables = source.tables()
        log_id = source.meta("log_id") or ""
        outcome = decide(log_id, target.state([t.name for t in tables]), to, lambda: _digests(source, tables))
        if outcome is not Outcome.UP_TO_DATE:
            marker = marker_text(Marker(log_id, location.shown(to), source.sent()))
            copy_all(source, target, tables, {MARKER: marker}, log_id=log_id,
                     at=clock.now().isoformat(timespec="seconds"), progress=progress)
    finally:
        source.close()
    copied = outcome is not Outcome.UP_TO_DATE
    return CopyResult(str(path), location.shown(to), outcome, False,
                      tuple(TableCopy(t.name, t.rows, t.rows if copied else 0) for t in tables),
                      time.monotonic() - started)


def _digests(source: Source, tables: list[Table]) -> dict[str, str]:
    return {t.name: source.digest(t) for t in tables}


def _dry_run(path: Path, to: str, password: str | None, started: float) -> CopyResult:
    from crm_automation.store import postgres
    from crm_automation.store.copy import Source, Target

    source = Source(path)
    try:
        tables = source.tables()
        conn = postgres.connect_readonly(to, password=password)
        if conn is None:  # no log on the server yet: everything would be copied
            outcome = Outcome.COPIED
        else:
            try:
                state = Target(conn).state([t.name for t in tables])
                outcome = decide(source.meta("log_id") or "", state, to, lambda: _digests(source, tables))
            finally:
                conn.close()
    finally:
        source.close()
    copied = outcome is not Outcome.UP_TO_DATE
    return CopyResult(str(path), location.shown(to), outcome, True,
                      tuple(TableCopy(t.name, t.rows, t.rows if copied else 0) for t in tables),
                      time.monotonic() - started)


def decide(log_id: str, state: TargetState, to: str, digests: Callable[[], dict[str, str]]) -> Outcome:
    """Copy, copy again, or nothing to do; or refuse a target that holds another log, or this one written since."""
    where = location.shown(to)
    if not state.holds_rows:
        return Outcome.COPIED
    other = next((x for x in (state.log_id, state.marker_log_id) if x is not None and x != log_id), None)
    if other is not None:
        raise ConfigError(f"{where}: this PostgreSQL database already holds another activity log (log id {other}; "
                          f"the workspace's SQLite log is {log_id}; {_rows(state)}): db copy never mixes two logs",
                          hint="copy into an empty database (createdb -O crm --locale=C -T template0 crm2), or drop "
                               "this one first if you are sure nobody needs it")
    if state.stamp is None or state.written_since:
        since = (f"since the copy of {state.stamp.at} ({_rows(state, state.written_since)} written or removed)"
                 if state.stamp is not None else "by crm-automation, not by a complete db copy")
        raise ConfigError(f"{where}: this PostgreSQL database holds this workspace's log, and it has been written "
                          f"{since}: a worker has used it, and copying over it would lose what it recorded",
                          hint="if the workspace already runs on PostgreSQL, keep it so; the SQLite file is the "
                               "older copy")
    return Outcome.UP_TO_DATE if digests() == dict(state.stamp.digests) else Outcome.COPIED_AGAIN


def _rows(state: TargetState, counts: Mapping[str, int] | None = None) -> str:
    shown = {t: n for t, n in (counts if counts is not None else state.tables).items() if n}
    return ", ".join(f"{t} {n} row(s)" for t, n in sorted(shown.items())) or "no rows"

