"""The activity log on a PostgreSQL server (issue #20): the connection, its guard and the schema's migrations.

``Store.open("postgresql://user@host:5432/crm")`` opens the same
:class:`~crm_automation.store.repo.Store` over this connection instead of a
SQLite file: every part runs the same statement texts, translated at one
point (:data:`crm_automation.store.dialect.POSTGRESQL`). Every statement of
the store has its PostgreSQL spelling; the contract tests run the send
lifecycle, the transaction rule, sync, fetched mail, suppressions, rekey,
the planning reads, reports, search, contact times, the pipeline, the
owner digests' and the stale list's reads (tests/app/test_sales_reads.py,
one digest end to end) and the portable rewrites over both engines.
``[workspace] database`` takes the URL (``config.py``: never with a
password). Several workers may share the log (issue #20, stage 2): each
keeps one session of its own (:class:`Member`: its worker lock and the
stage locks), sends are claimed row by row, rate limits counted in the
database; SQLite keeps its lock file and one worker.

Why psycopg 3: the maintained libpq driver; libpq honours the URL's
``sslmode``, ``PGPASSWORD``, ``~/.pgpass`` and client certificates as every
PostgreSQL tool does, so no secret need be in the config file.

The connection runs in autocommit mode and the store opens its own
transactions (``BEGIN`` ... ``COMMIT``, savepoints inside), exactly as on
SQLite with ``isolation_level=None``: nothing is committed behind our back.

Migrations: the same names as SQLite's (``store/migrations.py``), recorded in
the same ``_migrations`` table, each applied once in its own transaction;
the schema version is how many are recorded (SQLite keeps it in ``PRAGMA
user_version`` too). The DDL is PostgreSQL's own (``store/schema_pg.py``):
types, identity columns and schema 10's triggers in PL/pgSQL.
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import psycopg
import psycopg.errors
from psycopg import pq
from psycopg.rows import TupleRow

from crm_automation.errors import ConfigError, CrmError, LogBusyError, LogConflictError, ServiceError
from crm_automation.store.connection import Driver, Params
from crm_automation.store.dialect import POSTGRESQL
from crm_automation.store.location import shown
from crm_automation.store.migrations import MIGRATIONS, SCHEMA_VERSION
from crm_automation.store.schema_pg import PG_MIGRATIONS

# One advisory-lock key space for the migrations: two processes opening a new database at once must not both
# create the tables (PostgreSQL's DDL is transactional, but CREATE TABLE races end in a unique violation).
_MIGRATION_LOCK = 0x63726D20  # "crm "


def server_error(where: str, e: psycopg.Error) -> CrmError:
    """A server or network failure as a message for the admin (exit 3: the next pass tries again).

    Decided by the exception's class (psycopg maps SQLSTATE classes to
    them), not by its text; an error of our SQL is re-raised as it is. A
    lock wait cut short (SQLSTATE 55P03, only inside ``not_waiting``) is
    :class:`LogBusyError`, as SQLite's busy log; a transaction the server
    rolled back because it and another waited for each other (40P01, 40001)
    is :class:`LogConflictError`: running the unit again is right.
    """
    if isinstance(e, psycopg.errors.LockNotAvailable):  # lock_timeout ran out (PgGuarded.not_waiting)
        return LogBusyError(f"{where}: the activity log is busy (another transaction holds a row this write "
                            f"changes: {str(e).strip()}); nothing of the transaction was kept",
                            hint="the caller tries again; if it keeps happening, look for a long transaction "
                                 "in pg_stat_activity")
    if isinstance(e, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):  # 40P01, 40001
        return LogConflictError(f"{where}: the transaction waited for another one that waited for it "
                                f"({str(e).strip()}); nothing of it was kept",
                                hint="run it again (the fetch does so itself)")
    if isinstance(e, psycopg.OperationalError):
        return ServiceError(f"{where}: the PostgreSQL server did not answer ({str(e).strip()})",
                            hint="check that the server is running and reachable, then run again; nothing was "
                                 "half-written (the transaction was rolled back)")
    raise e


class PgGuarded:
    """The psycopg connection with :class:`~crm_automation.store.connection.Guarded`'s surface.

    Each statement is translated once (``?`` -> ``%s``, cached per text);
    parameters are always passed, so psycopg reads ``%%`` as ``%``.
    """

    __slots__ = ("_c", "_not_waiting", "_open", "_pipe", "_reconnect", "path", "trace")
    dialect = POSTGRESQL

    def __init__(self, conn: psycopg.Connection[TupleRow], path: str,
                 reconnect: Callable[[], psycopg.Connection[TupleRow]] | None = None) -> None:
        self._c = conn
        self.path = path
        # How to reach the server again after it went away (a restart, a crash): a long-lived worker carries on
        # at its next pass instead of failing every pass until restarted (issue #20). None: never reconnect.
        self._reconnect = reconnect
        self._open = False  # a transaction of ours was begun on the current connection and not yet ended
        # Called with each statement's text as the store wrote it: the tests count commits and savepoints with
        # it, as they do with sqlite3's set_trace_callback (psycopg has no such hook).
        self.trace: Callable[[str], object] | None = None
        self._not_waiting = False  # inside not_waiting(): lock_timeout is 1 ms
        self._pipe: psycopg.Pipeline | None = None  # inside pipeline(): psycopg's pipeline of this connection

    def execute(self, sql: str, args: Params = ()) -> psycopg.Cursor[TupleRow] | Pending:
        """Run one statement; a lost server becomes a :class:`ServiceError` naming the log (password hidden).

        Inside :meth:`pipeline` the statement is only sent: its answer is
        read when the caller reads it (:class:`Pending`).
        """
        if self.trace is not None:
            self.trace(sql)
        text = _text(sql)
        if self._pipe is not None:
            return self._send(text, args)
        if self._c.closed:
            self._again(sql)
        try:
            cur = self._c.execute(text, args)
        except psycopg.OperationalError as e:
            # A session the server ended while we were idle (restarted between two passes) is found only now:
            # a unit's BEGIN, or a read outside any unit, changed nothing and is tried once on a new session (a
            # write standing alone is not: it may have been committed before the answer was lost).
            if not (self._c.closed and self._reconnect is not None
                    and (sql == "BEGIN" or (not self._open and sql.lstrip()[:6].upper() == "SELECT"))):
                raise server_error(self.path, e) from None
            self._again(sql)
            try:
                cur = self._c.execute(text, args)
            except psycopg.OperationalError as e2:
                raise server_error(self.path, e2) from None
        if sql == "BEGIN":
            self._open = True
        elif sql in ("COMMIT", "ROLLBACK"):
            self._open = False
        return cur

    def _send(self, text: bytes, args: Params) -> Pending:
        """A statement of a pipelined unit: sent, its answer left to the reader (never reconnected: see pipeline).

        No ``_open`` to keep: the unit sends no ``BEGIN``/``COMMIT`` here,
        the pipeline is its transaction (``Dialect.pipeline_is_transaction``).
        """
        try:
            cur = self._c.execute(text, args)
        except psycopg.OperationalError as e:
            raise server_error(self.path, e) from None
        return Pending(cur, self)

    @contextmanager
    def pipeline(self) -> Iterator[None]:
        """:meth:`~crm_automation.store.connection.Driver.pipeline`: psycopg's pipeline mode (issue #20).

        Why: on loopback each answer costs a round trip and two context
        switches, as much as a small statement itself; the send loop's unit
        was six statements, six waits. Inside, statements are sent at once
        and answered in order; a read of rows (:class:`Pending`) waits for
        the answers up to its statement (a Flush, which ends nothing), the
        block's end for all of them (a Sync).

        The block is one transaction with no ``BEGIN``: the statements
        before a Sync run as one implicit transaction, which the Sync commits
        if every one succeeded; after a failed one the server skips the rest
        and rolls back (PostgreSQL's docs, "Message Flow: Pipelining"). The
        Sync is sent only when the block ends without an exception; on any
        exception (a server error read inside, a bug, Ctrl-C) the session is
        closed instead, so the server rolls back whatever was sent and no
        half unit can be committed by a Sync; the next unit connects again.

        Entered only at a unit's start (:meth:`Connection.transaction`): a
        session found closed there is opened again, as for ``BEGIN``. Here
        no statement of the unit's own can find that out (its first answer
        comes after its writes were sent, and a session lost then fails the
        unit), so the socket is looked at first (:func:`_hung_up`): a server
        restarted between two units has said so and closed it. A session
        lost inside the unit is not opened again: the unit fails whole with
        :class:`ServiceError`.
        """
        if self._pipe is not None:
            yield
            return
        if self._c.closed or _hung_up(self._c):
            self._again("BEGIN")
        block = self._c.pipeline()
        try:
            self._pipe = block.__enter__()
        except psycopg.OperationalError as e:
            raise server_error(self.path, e) from None
        try:
            yield
        except BaseException:
            self._pipe = None
            self._c.close()  # never Sync a unit that did not finish: the server rolls back what it got
            with suppress(psycopg.Error):
                block.__exit__(None, None, None)  # only psycopg's own state: the closed session sends nothing
            raise
        self._pipe = None
        try:
            block.__exit__(None, None, None)
        except psycopg.OperationalError as e:
            raise server_error(self.path, e) from None

    def _again(self, sql: str) -> None:
        """A connection the server closed: open a new one, unless a transaction of ours was open on the old one.

        Only at a unit's start (``BEGIN``) or outside any: a statement in the
        middle of a transaction whose first part died with the old session
        must fail, never run alone in autocommit on a new one (what came
        before it in the unit was rolled back by the server).
        """
        if self._reconnect is None or (self._open and sql != "BEGIN"):
            raise ServiceError(f"{self.path}: the PostgreSQL server did not answer (the connection is closed)",
                               hint="the next pass connects again; nothing was half-written (the transaction "
                                    "was rolled back)")
        try:
            self._c = self._reconnect()
        except ServiceError as e:
            raise ServiceError(f"{self.path}: the PostgreSQL server did not answer (the connection was closed, and "
                               f"connecting again failed: {e})",
                               hint="the next pass connects again; nothing was half-written (the transaction was "
                                    "rolled back)") from None
        self._open = False

    def executemany(self, sql: str, args: Iterable[Params]) -> psycopg.Cursor[TupleRow]:
        """Run one statement per parameter set (``rowcount``: their sum)."""
        cur = self._c.cursor()
        try:
            cur.executemany(_text(sql), args)
        except psycopg.OperationalError as e:
            raise server_error(self.path, e) from None
        return cur

    def insert_many(self, insert: str, values: str, tail: str, rows: Sequence[Sequence[object]]) -> list[Any]:
        """:meth:`~crm_automation.store.connection.Driver.insert_many`: ``executemany`` handing rows back."""
        if not rows:
            return []
        sql = insert + values + tail
        if self.trace is not None:
            self.trace(sql)
        out: list[Any] = []
        try:
            with self._c.cursor() as cur:
                cur.executemany(_text(sql), rows, returning=True)
                while True:
                    out += cur.fetchall()
                    if not cur.nextset():
                        return out
        except psycopg.OperationalError as e:
            raise server_error(self.path, e) from None

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (``transaction()`` then nests a savepoint); none on a closed connection."""
        if self._pipe is not None:
            return True  # the pipeline's implicit transaction (libpq's status says ACTIVE while answers are owed)
        if self._c.closed:
            return False  # the server ended the session, and with it any transaction: nothing to roll back
        return self._c.info.transaction_status != pq.TransactionStatus.IDLE

    @contextmanager
    def not_waiting(self) -> Iterator[None]:
        """Inside, a statement that meets another transaction's row lock fails at once: LogBusyError.

        ``Connection.not_waiting``'s contract on PostgreSQL (issue #19's
        ``serve`` writes one-click batches on its event loop, which must not
        sleep in the server's lock queue). There is no whole-log write lock
        here, only row locks (and the table locks DDL takes), so "busy" means
        another transaction holds a row this write changes. ``lock_timeout``
        = 1 ms (0 would mean "wait for ever"), set for the session here and
        reset after (to the session's default, which a URL's ``options`` may
        set): ``SET LOCAL`` would need a transaction open, and the caller
        opens it inside. The statement that timed out changed nothing, and
        PostgreSQL aborts the transaction, which ``transaction()`` rolls
        back, so the caller may try the whole unit again.
        """
        if self._not_waiting:  # nested: the outer one resets
            yield
            return
        self.execute("SET lock_timeout = '1ms'")
        self._not_waiting = True
        try:
            yield
        finally:
            self._not_waiting = False
            self.execute("RESET lock_timeout")

    @property
    def raw(self) -> psycopg.Connection[TupleRow]:
        """The psycopg connection itself (tests)."""
        return self._c

    def close(self) -> None:
        """Close the connection."""
        self._c.close()


class Pending:
    """The answer to a statement sent in a pipeline (:meth:`PgGuarded.pipeline`), read when the caller reads it.

    The rows wait for their answer (psycopg asks the server to flush what
    it has: one round trip, the transaction goes on). ``rowcount`` is read
    after the pipeline has ended, when every answer is in: waiting for it
    inside would take a Sync, which commits the pipeline's implicit
    transaction half-way (:meth:`PgGuarded.pipeline`). A lost server raises
    :class:`ServiceError` here, as it would have at the statement.
    """

    __slots__ = ("_cur", "_guard")

    def __init__(self, cur: psycopg.Cursor[TupleRow], guard: PgGuarded) -> None:
        self._cur = cur
        self._guard = guard

    @property
    def rowcount(self) -> int:
        """Rows the statement changed: read after the pipeline (see the class)."""
        if self._cur.pgresult is None:
            raise RuntimeError("a pipelined statement's row count is read after its unit (its answer is not in)")
        return self._cur.rowcount

    def fetchone(self) -> Any:
        """The next row (waiting for the answer if need be), or None."""
        try:
            return self._cur.fetchone()
        except psycopg.OperationalError as e:
            raise server_error(self._guard.path, e) from None

    def fetchall(self) -> list[Any]:
        """The remaining rows (waiting for the answer if need be)."""
        try:
            return self._cur.fetchall()
        except psycopg.OperationalError as e:
            raise server_error(self._guard.path, e) from None

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


def _hung_up(conn: psycopg.Connection[TupleRow]) -> bool:
    """Whether the server is ending this idle session: its socket has something to read (no wait, one poll).

    An idle session of ours is sent nothing (no LISTEN; notices and
    parameter changes come with a statement's answer) unless the server
    ends it (a restart, ``pg_terminate_backend``): a FATAL message, which
    libpq takes for a notice while idle, then the end of the stream,
    maybe a moment later. So readable means going away: the connection is
    closed here, and the caller opens a new one, as a failed ``BEGIN``
    would have made it do.
    """
    try:
        fd = conn.fileno()
    except psycopg.Error:
        return True
    if hasattr(select, "poll"):  # no limit on the descriptor's number (select's is 1024)
        waiting = select.poll()
        waiting.register(fd, select.POLLIN)
        readable = bool(waiting.poll(0))
    else:  # pragma: no cover - Windows
        readable = bool(select.select([fd], [], [], 0)[0])
    if readable:
        conn.close()
    return readable


@lru_cache(maxsize=1024)
def _text(sql: str) -> bytes:
    """The store's text as psycopg takes it: translated (store/dialect.py) and encoded, once per text."""
    return POSTGRESQL.sql(sql).encode()


def _connect(url: str, password: str | None, application_name: str | None = None) -> psycopg.Connection[TupleRow]:
    extra: dict[str, Any] = {}  # libpq's own parameters, given beside the URL
    if password:
        extra["password"] = password
    if application_name:
        extra["application_name"] = application_name
    try:
        return psycopg.connect(url, autocommit=True, **extra)
    except psycopg.Error as e:
        raise ServiceError(f"{shown(url)}: cannot connect to the PostgreSQL server ({str(e).strip()})",
                           hint="check the URL in [workspace] database, that the server runs and accepts this "
                                "user from this machine (pg_hba.conf), and the password's source "
                                "([workspace] database_password_env, PGPASSWORD or ~/.pgpass)") from None


def connect(url: str, *, password: str | None = None) -> PgGuarded:
    """Connect (autocommit: the store opens its own transactions) and bring the schema up to date.

    ``password``: from the variable ``[workspace] database_password_env``
    names (issue #20), else libpq's own ``PGPASSWORD`` / ``~/.pgpass`` / a
    client certificate apply.
    """
    guarded = PgGuarded(_connect(url, password), shown(url), lambda: _connect(url, password))
    try:
        migrate(guarded)
    except BaseException:
        guarded.close()
        raise
    return guarded


def connect_readonly(url: str, *, password: str | None = None) -> PgGuarded | None:
    """Connect for reading only (dry runs, ``check``): nothing migrated, every transaction read-only.

    A guarantee as SQLite's ``mode=ro`` is. None when the database has no
    log yet: the caller reads an empty one, as for a SQLite file not created
    yet. A log of another schema version is refused (it cannot be upgraded
    in a copy, as a SQLite file is).
    """
    guarded = PgGuarded(_connect(url, password), shown(url))
    version = _recorded(guarded)
    if version is None:
        guarded.close()
        return None
    if version != SCHEMA_VERSION:
        guarded.close()
        raise ConfigError(f"{guarded.path}: the log's schema is version {version}, this crm-automation reads "
                          f"version {SCHEMA_VERSION}",
                          hint="run a command that writes (crm-automation run, sync or send) once to upgrade it")
    guarded.execute("SET default_transaction_read_only = on")
    return guarded


def _recorded(conn: PgGuarded) -> int | None:
    """How many migrations the database records; None when it has no log (no ``_migrations`` table)."""
    if conn.execute("SELECT to_regclass('_migrations')").fetchone() == (None,):
        return None
    return schema_version(conn)


def migrate(conn: PgGuarded) -> list[str]:
    """Apply pending migrations, each in its own transaction, under an advisory lock; return the names applied."""
    conn.execute("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
        unknown = done - {name for name, _ in MIGRATIONS}
        if unknown:
            raise ConfigError(f"{conn.path}: the log was written by a newer crm-automation (migrations "
                              f"{', '.join(sorted(unknown))}); upgrade before using it")
        applied = []
        for name, _ in MIGRATIONS:
            if name in done:
                continue
            conn.execute("BEGIN")
            try:
                PG_MIGRATIONS[name](conn)
                conn.execute("INSERT INTO _migrations VALUES (?, ?)", (name, datetime.now(UTC).isoformat()))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            applied.append(name)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(?)", (_MIGRATION_LOCK,))


def schema_version(conn: PgGuarded) -> int:
    """How many migrations the database has (``check`` reports it)."""
    row = conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()
    return int(row[0]) if row else 0


# Advisory-lock keys, one key space per schema so workspaces sharing a server in schemas of one database never
# block each other (advisory locks are per database): the two-integer form (schema's space, name), apart from the
# one-integer keys of the migrations. hashtext is PostgreSQL's own string hash; a collision of two names of one
# space could only make a stage skip a cycle or a worker look alive a timeout longer.
_WORKER_KEY = "hashtext('crm-automation worker ' || current_schema()), hashtext(?)"
_STAGE_KEY = "hashtext('crm-automation stage ' || current_schema()), hashtext(?)"
# Who holds a stage: the session's application_name, which a member sets to its worker id (issue #20, rule 2).
_STAGE_HOLDER = ("SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                 "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
                 "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                 "AND l.classid = (hashtext('crm-automation stage ' || current_schema()))::oid "
                 "AND l.objid = (hashtext(?))::oid AND l.pid <> pg_backend_pid()")
_APPLICATION_NAME_MAX = 63  # NAMEDATALEN - 1: longer names are cut by the server


def unlocked_workers(conn: Driver, ids: Iterable[str]) -> set[str]:
    """Of these workers, those whose session lock this session can take now: their session is gone (dead).

    Each lock taken to look is let go at once. Never ask about the worker
    whose own session this is (a session may take its own lock again).
    """
    dead = set()
    for wid in ids:
        row = conn.execute(f"SELECT pg_try_advisory_lock({_WORKER_KEY})", (wid,)).fetchone()
        if row and row[0]:
            conn.execute(f"SELECT pg_advisory_unlock({_WORKER_KEY})", (wid,))
            dead.add(wid)
    return dead


class Member:
    """A worker's own session on the server, for its whole life (issue #20): its worker lock and its stage locks.

    The worker lock says "alive" to every other session: a killed worker's
    session is closed by its kernel at once, so the lock is free at the next
    look (:func:`unlocked_workers`). Stage locks are session advisory
    try-locks (never a wait): one worker at a time per stage name, the
    others skip the stage for the cycle. The session's ``application_name``
    is the worker's id, so a refused stage can name who holds it. Used from
    one thread (the worker's); the heartbeat has its own connection.
    """

    def __init__(self, url: str, password: str | None, worker_id: str) -> None:
        self.url = url
        self.password = password
        self.worker_id = worker_id
        self._conn: PgGuarded | None = None
        self._joined = False  # joined and not left: a session lost meanwhile is opened again

    def join(self) -> PgGuarded:
        """Connect and take this worker's lock (its id is new: nobody else can hold it); the session."""
        conn = PgGuarded(_connect(self.url, self.password, self.worker_id[:_APPLICATION_NAME_MAX]), shown(self.url))
        row = conn.execute(f"SELECT pg_try_advisory_lock({_WORKER_KEY})", (self.worker_id,)).fetchone()
        if not (row and row[0]):  # pragma: no cover - a hash collision with a live worker's id
            conn.close()
            raise ServiceError(f"{shown(self.url)}: worker {self.worker_id}'s lock is taken by another session",
                               hint="start the worker again (it gets a new id)")
        self._conn = conn
        self._joined = True
        return conn

    def _session(self) -> PgGuarded:
        """The session; a new one, holding this worker's lock again, when the server ended the last one.

        A server restarted under a running worker ends every session, and
        with it this worker's lock: the worker joins again under the same id
        at its next stage (a worker that another took for dead meanwhile
        finds its row stopped at its next heartbeat and stops, app/fleet.py).
        """
        if not self._joined:
            raise ServiceError(f"{shown(self.url)}: this worker has no session on the server (not joined)")
        if self._conn is None or self._conn.raw.closed:
            self._conn = None
            return self.join()  # raises ServiceError while the server is still away: the stage waits a pass
        return self._conn

    def try_stage(self, stage: str) -> bool:
        """Take ``stage``'s lock without waiting; False when another worker holds it."""
        sql = f"SELECT pg_try_advisory_lock({_STAGE_KEY})"
        try:
            row = self._session().execute(sql, (stage,)).fetchone()
        except ServiceError:
            if self._conn is None or not self._conn.raw.closed:
                raise
            row = self._session().execute(sql, (stage,)).fetchone()  # found closed only now: joined again
        return bool(row and row[0])

    def release_stage(self, stage: str) -> None:
        """Let ``stage`` go (another worker may take it at once)."""
        self._session().execute(f"SELECT pg_advisory_unlock({_STAGE_KEY})", (stage,))

    def stage_holder(self, stage: str) -> str | None:
        """The ``application_name`` of the session holding ``stage`` (a worker's id, maybe cut), or None."""
        row = self._session().execute(_STAGE_HOLDER, (stage,)).fetchone()
        return str(row[0]) if row and row[0] else None

    def leave(self) -> None:
        """Close the session: every lock it held is free."""
        self._joined = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None
