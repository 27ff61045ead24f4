"""The log's connection: opening, the guard that turns disk failures into messages, and ``transaction()``.

Every part of :class:`~crm_automation.store.repo.Store` builds on
:class:`Connection`; the rule for who owns a transaction is written in the
package docstring (``store/__init__.py``) and implemented here.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self

from crm_automation.errors import ConfigError, CrmError, LogBusyError, StorageError
from crm_automation.store.dialect import SQLITE, Dialect
from crm_automation.store.location import is_postgresql
from crm_automation.store.migrations import SCHEMA_VERSION, migrate


def iso(dt: datetime) -> str:
    """ISO 8601 UTC text, the log's one time format."""
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    """Inverse of :func:`iso` (accepts any ISO form)."""
    if not text:
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the log file, or None for an in-memory log or a missing file."""
    if path == ":memory:":
        return None
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


_NEARLY_FULL = 256 * 1024


def _free_bytes(folder: str) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return _NEARLY_FULL


def storage_error(path: str, e: sqlite3.Error, doing: str = "writing") -> CrmError:
    """Turn SQLite's answer for an environmental failure into a message for the admin (issue #9).

    Decided by SQLite's result code (``sqlite_errorcode``), not by its text.
    Returns the error to raise; a code that is not environmental (a bug in
    our SQL) is re-raised as it is by the caller.
    """
    folder = str(Path(path).parent)
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    if code == sqlite3.SQLITE_IOERR and _free_bytes(folder) < _NEARLY_FULL:
        code = sqlite3.SQLITE_FULL  # SQLite reports some writes on a full disk (the WAL index) as I/O errors
    if code == sqlite3.SQLITE_FULL:
        return StorageError(f"{path}: the disk is full: {doing} the activity log failed and was rolled back",
                            hint=f"free space on the disk that holds {folder}, then run again; nothing was "
                                 "half-written")
    if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return StorageError(f"{path}: cannot write the activity log (the file or its folder is read-only or "
                            f"not accessible: {e})",
                            hint=f"make {folder} and the files in it writable by the user running crm-automation "
                                 f"([workspace] database names the file)")
    if code == sqlite3.SQLITE_IOERR:
        return StorageError(f"{path}: disk I/O error while {doing} the activity log ({e}, "
                            f"{getattr(e, 'sqlite_errorname', '')})",
                            hint=f"check the disk that holds {folder} (full, removed, or a network drive that "
                                 "dropped); nothing was half-written")
    if code == sqlite3.SQLITE_BUSY:
        return LogBusyError(f"{path}: the activity log is locked by another program ({e}; waited "
                            f"{BUSY_TIMEOUT:g} s)",
                            hint="close other programs writing to the log (a SQLite browser with unsaved "
                                 "changes); the next pass retries")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return ConfigError(f"{path}: not a crm-automation activity log, or the file is damaged ({e})",
                           hint="restore it from a backup, or point [workspace] database at the right file")
    raise e


# How long a write waits for another connection's write transaction before giving up (SQLite's busy
# timeout, seconds). Issue #19: the worker and short writes of `serve` and the CLI share the log. The worker's
# longest write transaction, measured on 100,000 customers, is queueing a broadcast to all of them (~0.9 s);
# the first sync of the sheet ~0.5 s, a fetched batch ~20 ms, a send's commit ~0.2 ms. 30 s leaves room
# for ten times the customers on a slow disk.
BUSY_TIMEOUT = 30.0

# How often a write connection tries again for the write lock while another connection holds it (seconds).
# Why not SQLite's own busy handler: it sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms ... between tries,
# so a write that meets a 20 ms transaction sleeps until ~33 ms, one that meets a 0.1 s transaction until ~0.18 s
# (issue #19: the p99 of serve's one-click POSTs sat in clusters at those steps while the worker sent, and the
# worker's send loop slept the same way behind serve's writes). Python's sqlite3 has no set_busy_handler, so the
# write connection's busy timeout is 0 and :class:`Guarded` tries again every millisecond until BUSY_TIMEOUT.
BUSY_POLL = 0.001

# Rows per multi-row INSERT (Guarded.insert_many): 13 parameters an activity, 6,500 a statement, well below
# SQLite's 32,766.
ROWS_PER_INSERT = 500

# A statement's parameters: by position or by name.
Params = Sequence[object] | Mapping[str, object]


class Rows(Protocol):
    """What a statement returns on either engine: sqlite3's cursor, psycopg's (issue #20).

    No ``lastrowid`` (psycopg has none): a new row's id is read with ``RETURNING id``.
    """

    @property
    def rowcount(self) -> int:
        """Rows the statement changed."""
        ...

    def fetchone(self) -> Any:
        """The next row (a tuple), or None."""
        ...

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        ...

    def __iter__(self) -> Iterator[Any]: ...


class Driver(Protocol):
    """The guarded connection every part of the store writes through: :class:`Guarded` (SQLite) or PostgreSQL's.

    Environmental failures (a full disk, a lost server) come out of it as
    :class:`~crm_automation.errors.CrmError` naming the log.
    """

    @property
    def path(self) -> str:
        """The log as messages name it (a file's path; a URL without its password)."""
        ...

    @property
    def dialect(self) -> Dialect:
        """The engine's spellings (store/dialect.py)."""
        ...

    def execute(self, sql: str, args: Params = ()) -> Rows:
        """Run one statement (the store's text; the driver translates it)."""
        ...

    def executemany(self, sql: str, args: Iterable[Params]) -> Rows:
        """Run one statement per parameter set."""
        ...

    def insert_many(self, insert: str, values: str, tail: str, rows: Sequence[Sequence[object]]) -> list[Any]:
        """The one statement ``insert + values + tail`` (an ``INSERT ... RETURNING``) for every row; what it hands back.

        Why on the driver (issue #20): each engine's fastest way differs.
        SQLite: one multi-row ``VALUES`` statement a chunk (sqlite3's
        ``executemany`` drops ``RETURNING`` rows). psycopg: ``executemany``
        with ``returning=True`` in one pipeline (a multi-row text of
        thousands of parameters is parsed again on every call: psycopg
        caches short queries only).
        """
        ...

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        ...

    def not_waiting(self) -> AbstractContextManager[None]:
        """Inside, a statement that would wait for another transaction's lock raises LogBusyError at once."""
        ...

    def pipeline(self) -> AbstractContextManager[None]:
        """Inside, a statement may go to the server before the answer to the last one came back.

        For a hot unit (:meth:`Connection.transaction` with ``pipelined``):
        an answer is waited for only where rows are read and at the block's
        end (a ``rowcount`` is read after the block), so a failure may
        surface at a later read or at the end rather than at its statement.
        SQLite runs in our process: nothing to wait for, a no-op. PostgreSQL:
        psycopg's pipeline mode, the block one implicit transaction
        (:attr:`Dialect.pipeline_is_transaction`; issue #20).
        """
        ...

    def close(self) -> None:
        """Close the connection."""
        ...


class Guarded:
    """The SQLite connection, with environmental failures turned into :class:`StorageError` (issue #9).

    Why a wrapper: every write of the store can meet a full disk or a
    read-only folder, and a raw ``sqlite3.OperationalError`` reached the user
    as a traceback with exit 1. One place turns them into a message naming
    the file and what to do.
    """

    __slots__ = ("_c", "path", "poll")
    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection, path: str, *, poll: bool = False) -> None:
        self._c = conn
        self.path = path
        self.poll = poll  # the connection's busy timeout is 0: a busy log is waited for here (BUSY_POLL)

    def execute(self, sql: str, args: Params = ()) -> sqlite3.Cursor:
        """``sqlite3.Connection.execute``, a disk failure raised as :func:`storage_error` says.

        On a polling connection a statement that finds the log busy (another
        connection's write transaction; ``BEGIN IMMEDIATE`` above all) is tried
        again every :data:`BUSY_POLL` seconds for up to :data:`BUSY_TIMEOUT`:
        a statement that failed with ``SQLITE_BUSY`` changed nothing (SQLite
        undoes the statement), so trying it again is what SQLite's own busy
        handler does, in finer steps.
        """
        try:
            return self._c.execute(sql, args)
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            if self.poll and _is_busy(e):
                return self._again(sql, args, e)
            raise storage_error(self.path, e) from None

    def _again(self, sql: str, args: Params, error: sqlite3.Error) -> sqlite3.Cursor:
        deadline = time.monotonic() + BUSY_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(BUSY_POLL)
            try:
                return self._c.execute(sql, args)
            except (sqlite3.OperationalError, sqlite3.DatabaseError) as e:
                if not _is_busy(e):
                    raise storage_error(self.path, e) from None
                error = e
        raise storage_error(self.path, error) from None

    def executemany(self, sql: str, args: Iterable[Params]) -> sqlite3.Cursor:
        """``sqlite3.Connection.executemany``, a disk failure raised as :func:`storage_error` says.

        Never tried again on a busy log: rows before the failing one may be
        written (the store calls it inside its transactions, which hold the
        write lock already, so it does not meet a busy log).
        """
        try:
            return self._c.executemany(sql, args)
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            raise storage_error(self.path, e) from None

    def insert_many(self, insert: str, values: str, tail: str, rows: Sequence[Sequence[object]]) -> list[Any]:
        """:meth:`Driver.insert_many`: a multi-row statement per :data:`ROWS_PER_INSERT` rows."""
        out: list[Any] = []
        for i in range(0, len(rows), ROWS_PER_INSERT):
            part = rows[i:i + ROWS_PER_INSERT]
            out += self.execute(insert + ",".join([values] * len(part)) + tail, [v for r in part for v in r]).fetchall()
        return out

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (``transaction()`` then nests a savepoint)."""
        return self._c.in_transaction

    @contextmanager
    def not_waiting(self) -> Iterator[None]:
        """Inside, a busy log is not polled: the statement's ``SQLITE_BUSY`` is raised at once (LogBusyError)."""
        poll, self.poll = self.poll, False
        try:
            yield
        finally:
            self.poll = poll

    def pipeline(self) -> AbstractContextManager[None]:
        """:meth:`Driver.pipeline`: SQLite answers each statement in our process, so there is nothing to overlap."""
        return nullcontext()

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection itself (tests inject faults through it)."""
        return self._c

    def close(self) -> None:
        """Close the sqlite3 connection."""
        self._c.close()


def _is_busy(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


class Connection:
    """The log file and its one connection; the base every part of the store shares.

    ``conn`` is the guarded connection (autocommit: ``isolation_level=None``,
    so nothing is ever committed by the driver behind our back); writes go
    through :meth:`transaction`. ``dialect``: the engine's spellings
    (store/dialect.py); this class is the SQLite log.
    """

    def __init__(self, conn: Driver) -> None:
        self.conn = conn
        self.path = conn.path
        self.dialect = conn.dialect
        self._savepoints = 0  # savepoints open now (the depth of nested transactions)
        self._identity = _file_identity(self.path) if self.dialect is SQLITE else None

    @classmethod
    def open(cls, path: Path | str, *, any_thread: bool = False, password: str | None = None) -> Self:
        """Open (creating and migrating) the log; WAL mode so readers never block the worker.

        ``any_thread``: the connection may be used from any thread, one at a
        time (the caller serialises: :class:`crm_automation.app.access.KeptWriter`).
        ``path`` may be a ``postgresql://`` URL (issue #20; ``password`` from
        ``[workspace] database_password_env``, else libpq's own sources).
        """
        p = str(path)
        if is_postgresql(p):
            from crm_automation.store import postgres  # psycopg is loaded only for a PostgreSQL log

            return cls(postgres.connect(p, password=password))
        if p != ":memory:":
            try:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"{p}: cannot create the database folder: {e.strerror}") from None
        try:
            conn = sqlite3.connect(p, isolation_level=None, timeout=BUSY_TIMEOUT, check_same_thread=not any_thread)
            conn.execute("PRAGMA user_version")  # reads the header: a file that is not a database fails here
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Checkpoints fsync the database file; one every ~40 MB of log instead of every 4 MB keeps a
            # campaign's two commits a message cheap on slow disks (issue #5: commits cost 0.5 ms each here).
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            conn.execute("PRAGMA cache_size=-65536")  # 64 MiB: a 100,000-row first sync stays in memory
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as e:
            raise storage_error(p, e, "opening") from None
        try:
            migrate(conn)
            conn.execute("PRAGMA busy_timeout = 0")  # from now on a busy log is polled finely (BUSY_POLL)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise storage_error(p, e, "upgrading") from None
        return cls(Guarded(conn, p, poll=True))

    @classmethod
    def open_readonly(cls, path: Path | str, *, password: str | None = None) -> Self:
        """Open the log for reading only: dry runs and ``check`` (issue #17).

        Why: a dry run takes no workspace lock, so it can run beside a worker;
        that is safe only if it writes nothing, and SQLite's read-only mode
        makes that a guarantee rather than a promise (a write raises). WAL
        readers never block the worker. A log that does not exist yet reads
        as an empty new one, in memory (what a first run would start from);
        one written by an older version is upgraded in a copy in memory, and
        the file is left as it is.
        """
        p = str(path)
        if is_postgresql(p):
            from crm_automation.store import postgres

            pg = postgres.connect_readonly(p, password=password)
            if pg is not None:
                return cls(pg)
        if p == ":memory:" or is_postgresql(p) or not Path(p).is_file():
            empty = cls.open(":memory:")
            empty.conn.execute("PRAGMA query_only=ON")  # a write raises here too, not only on a file
            return empty
        try:
            conn = sqlite3.connect(f"{Path(p).resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   timeout=BUSY_TIMEOUT)
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # a file that is not a database fails here
            if version != SCHEMA_VERSION:
                copy = sqlite3.connect(":memory:", isolation_level=None)
                conn.backup(copy)
                conn.close()
                conn = copy
                migrate(conn)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA query_only=ON")
        except sqlite3.DatabaseError as e:
            raise storage_error(p, e, "opening") from None
        return cls(Guarded(conn, p))

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        with suppress(sqlite3.Error):
            self.conn.close()

    def same_file(self) -> bool:
        """Whether the path still names the file this connection opened (False: deleted or replaced since)."""
        return self._identity is None or _file_identity(self.path) == self._identity

    def check_file(self) -> None:
        """Stop if the log file was deleted or replaced since it was opened (issue #9).

        SQLite keeps writing into a deleted file's inode, so without this a
        worker whose log was removed would go on and the next start would
        find an empty log, which looks exactly like "nobody has been mailed".
        """
        if self._identity is None:
            return
        now = _file_identity(self.path)
        if now is None:
            raise ConfigError(f"{self.path}: the activity log was deleted while the worker was running; stopping "
                              "so nothing is sent twice",
                              hint="restore the file from a backup (or the recycle bin), then start again")
        if now != self._identity:
            raise ConfigError(f"{self.path}: the activity log was replaced by another file while the worker was "
                              "running; stopping so nothing is sent twice",
                              hint="put the original log back, or start the worker again to check the new one")

    def schema_version(self) -> int:
        """How many of the named migrations the log has (``check`` reports it)."""
        row = self.conn.execute(self.dialect.schema_version_sql).fetchone()
        return int(row[0]) if row else 0

    def log_id(self) -> str:
        """The identity written into the log when it was created (table ``meta``)."""
        return self.meta("log_id") or ""

    def meta(self, key: str) -> str | None:
        """One value of the log's ``meta`` table (None when unset)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (None: delete) one value of the log's ``meta`` table."""
        with self.transaction():
            if value is None:
                self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                  "value = excluded.value", (key, value))

    @contextmanager
    def transaction(self, *, pipelined: bool = False) -> Iterator[None]:
        """One atomic unit: everything inside commits together or not at all.

        Outermost: ``BEGIN IMMEDIATE`` ... ``COMMIT`` (the write lock is taken
        at the start, so a busy log fails before any work, not at the commit).
        Inside another transaction: a ``SAVEPOINT``, released on success and
        rolled back alone on an exception, so a writer that is atomic on its
        own stays atomic inside a caller's larger unit and costs no commit.

        ``pipelined`` (the send loop's units, issue #20): the outermost unit
        runs in the driver's :meth:`~Driver.pipeline`: on PostgreSQL its
        statements travel together, answered where the unit reads rows and
        at its end, where the commit is waited for before the block is left
        (a ``sending`` mark is durable before the hand-over). Only for a
        unit that reads rows where it needs them and row counts after the
        block: an error surfaces at the next read or at the end, not at the
        statement that caused it, and nothing of the unit is kept. No
        nested ``transaction()`` inside (PostgreSQL has no savepoint in a
        pipeline's implicit transaction). A session found dead meanwhile is
        not reconnected inside the unit: it fails whole (ServiceError); the
        next unit connects again.
        """
        if pipelined and not self.conn.in_transaction:
            yield from self._pipelined()
            return
        if self.conn.in_transaction:
            # Named by depth, not by a running count: the names repeat, so each statement's text does too, and
            # the driver's statement cache (sqlite3 keeps 128 prepared; PostgreSQL's translation cache) keeps
            # them. A count made every SAVEPOINT a new text on a long-lived connection (serve's kept writer):
            # parsed afresh each time and pushing the store's other statements out of the cache (issue #19).
            self._savepoints += 1
            name = f"sp{self._savepoints}"
            try:
                self.conn.execute(f"SAVEPOINT {name}")
                try:
                    yield
                except BaseException:
                    self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                    self.conn.execute(f"RELEASE SAVEPOINT {name}")
                    raise
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
            finally:
                self._savepoints -= 1
            return
        self.conn.execute(self.dialect.begin)
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except CrmError:  # disk full and the like: nothing of this unit is kept
            with suppress(sqlite3.Error, CrmError):
                self.conn.execute("ROLLBACK")
            raise

    def _pipelined(self) -> Iterator[None]:
        """The outermost unit of :meth:`transaction` in the driver's pipeline (see there).

        Where the pipeline is a transaction by itself (PostgreSQL), no
        ``BEGIN``/``COMMIT`` is sent: two statements a message fewer.
        """
        own = not self.dialect.pipeline_is_transaction
        try:
            with self.conn.pipeline():
                if own:
                    self.conn.execute(self.dialect.begin)
                yield
                if own:
                    self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # the pipeline has ended: this ROLLBACK is answered on its own
                with suppress(sqlite3.Error, CrmError):
                    self.conn.execute("ROLLBACK")
            raise

    @contextmanager
    def not_waiting(self) -> Iterator[None]:
        """Inside, a write that finds the log busy fails at once with :class:`LogBusyError` instead of waiting.

        For a caller that waits its own way: ``serve`` records one-click
        unsubscribes on its event loop and, when the worker holds the write
        lock, sleeps there (``asyncio.sleep``) and tries again, rather than
        parking a thread in :class:`Guarded`'s poll (issue #19: handing each
        write to a thread cost more CPU than the write). A statement that
        failed as busy changed nothing, and ``transaction()`` rolls back what
        came before it, so trying the whole unit again is safe.

        Each engine's driver does it (issue #20): SQLite's write lock is the
        whole log's, so :class:`Guarded` stops polling for it. PostgreSQL has
        no whole-log lock (``BEGIN`` takes none; the worker and ``serve``
        write side by side), so a write waits only for a row another
        transaction is changing (the same send, the same address's
        suppression); there the wait is the server's, and
        :meth:`~crm_automation.store.postgres.PgGuarded.not_waiting` cuts it
        to ``lock_timeout`` = 1 ms, the failure raised as LogBusyError too.
        """
        with self.conn.not_waiting():
            yield
