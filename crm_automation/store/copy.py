"""Copying a SQLite log into PostgreSQL, row for row (issue #20, item 4: ``crm-automation db copy --to``).

The store's part: read the SQLite file in one snapshot, write every table
into a migrated PostgreSQL database in one transaction, count both sides.
What to do with a target that already holds a log (refuse, nothing new,
copy again) is decided by the use case (``app/dbcopy.py``) from what
:meth:`Target.state` reports; this module records and decides nothing.

Why one transaction for the whole copy: a run cut short (SIGKILL, a lost
server, a full disk) leaves the target exactly as before; the server rolls
the transaction back when the session dies, so running the copy again
starts from a clean target and completes it. A second copy of the same,
unchanged log is recognised by the stamp written in the same transaction
(``meta.copied_from``: the source's log id and a digest of every table), so
rerunning writes nothing at all.

Why ``COPY ... FROM STDIN (FORMAT BINARY)`` (psycopg's ``cursor.copy``):
one round trip per table instead of one per row, and no text escaping of
values; each value is sent with the target column's type (``set_types``),
so a BLOB reaches ``BYTEA`` as its bytes and a JSON text reaches ``TEXT``
byte for byte (nothing re-encodes it; ``jsonb`` would reorder keys).

What is written besides the rows:

- ``customers.seq`` (PostgreSQL's stand-in for SQLite's ``rowid``,
  ``schema_pg.v1``) is the SQLite ``rowid``, so "the sheet's order of
  arrival" is the same on both engines;
- every identity sequence is moved past the largest copied id, so the next
  activity or send gets a new id;
- schema 10's triggers (``schema_pg.FOLLOW_UP_TRIGGERS``) are disabled for
  the copy's transaction: the follow-up flags are copied as SQLite holds
  them, not recomputed row by row (1,000,000 activities would each run an
  ``UPDATE`` of ``sends``);
- ``_migrations`` holds SQLite's rows (the same names: the target was
  migrated first, so its tables are PostgreSQL's own DDL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import psycopg
from psycopg import sql

from crm_automation.errors import ConfigError, CrmError, DataError
from crm_automation.store.dialect import SQLITE
from crm_automation.store.migrations import SCHEMA_VERSION
from crm_automation.store.postgres import server_error
from crm_automation.store.schema_pg import FOLLOW_UP_TRIGGERS

if TYPE_CHECKING:
    from crm_automation.store.postgres import PgGuarded

STAMP = "copied_from"  # meta key: what the last complete copy wrote (the source's log id, each table's digest)
MARKER = "workspace_marker"  # meta key of a PostgreSQL workspace's marker (store/identity.py)
TICK = 10_000  # rows between two progress updates
SEQ = "seq"  # customers' order of arrival on PostgreSQL (SQLite's rowid)


class Bar(Protocol):
    """One progress display (``stage.Bar``'s shape; the store imports nothing above it)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more rows copied."""
        ...

    def close(self) -> None:
        """The table is done."""
        ...


class Progress(Protocol):
    """Where the copy reports its progress, one display per table (``stage.Progress``'s shape)."""

    def __call__(self, desc: str, total: int | None) -> Bar:
        """Start a display for ``desc`` with ``total`` rows."""
        ...


@dataclass(frozen=True, slots=True)
class Table:
    """One table of the source log: its columns as SQLite has them, and its rows in the snapshot."""

    name: str
    columns: tuple[str, ...]
    rows: int

    @property
    def target_columns(self) -> tuple[str, ...]:
        """The columns written on PostgreSQL: ``customers`` gets its ``seq`` (the SQLite rowid) first."""
        return (SEQ, *self.columns) if self.name == "customers" else self.columns


class Source:
    """The SQLite log, read-only, in one snapshot (a read transaction: WAL readers see one state of the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._c = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            self._c.execute("BEGIN")
            version = self._c.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"{path}: cannot read the activity log to copy ({e})") from None
        if version != SCHEMA_VERSION:
            self._c.close()
            raise ConfigError(f"{path}: the log's schema is version {version}, this crm-automation copies version "
                              f"{SCHEMA_VERSION}",
                              hint="run a command that writes (crm-automation sync or send) once to upgrade it, "
                                   "then copy")

    def tables(self) -> list[Table]:
        """Every table of the log (SQLite's own ``sqlite_*`` tables aside), by name, with its row count."""
        names = [r[0] for r in self._c.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY name")]
        out = []
        for name in names:
            cols = tuple(r[1] for r in self._c.execute("SELECT * FROM pragma_table_info(?)", (name,)))
            n = self._c.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0]
            out.append(Table(name, cols, int(n)))
        return out

    def batches(self, table: Table) -> Iterator[list[tuple[object, ...]]]:
        """The table's rows in a stable order (``customers`` with its rowid first, by rowid), :data:`TICK` at a time."""
        cols = ", ".join(f'"{c}"' for c in table.columns)
        if table.name == "customers":
            text = f"SELECT {SQLITE.rowid}, {cols} FROM customers ORDER BY {SQLITE.rowid}"
        else:
            text = f'SELECT {cols} FROM "{table.name}"'
        cur = self._c.execute(text)
        while batch := cur.fetchmany(TICK):
            yield batch

    def meta(self, key: str) -> str | None:
        """One value of the log's ``meta`` table."""
        row = self._c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def sent(self) -> int:
        """How many messages the log records as sent (the workspace marker's count)."""
        return int(self._c.execute("SELECT COUNT(*) FROM sends WHERE status = 'sent'").fetchone()[0])

    def digest(self, table: Table) -> str:
        """A digest of the table's rows: a later copy tells an unchanged log from a changed one by it."""
        h = hashlib.blake2b(digest_size=16)
        for batch in self.batches(table):
            h.update(repr(batch).encode())
        return h.hexdigest()

    def close(self) -> None:
        """End the snapshot and close the file."""
        self._c.close()


@dataclass(frozen=True, slots=True)
class Stamp:
    """What a complete copy recorded in the target (``meta.copied_from``)."""

    log_id: str
    at: str
    xid: str  # the copy's transaction: every row it wrote carries it as ``xmin``
    digests: Mapping[str, str]  # per source table
    counts: Mapping[str, int]  # per target table, right after the copy

    def to_json(self) -> str:
        """The form kept in ``meta``."""
        return json.dumps({"log_id": self.log_id, "at": self.at, "xid": self.xid, "digests": dict(self.digests),
                           "counts": dict(self.counts)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Stamp:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        return cls(str(d["log_id"]), str(d["at"]), str(d["xid"]), dict(d["digests"]), dict(d["counts"]))


@dataclass(frozen=True, slots=True)
class TargetState:
    """What the PostgreSQL database holds before a copy (the use case decides from it)."""

    tables: Mapping[str, int]  # rows per table
    log_id: str | None  # meta.log_id (a new database has one from its migration)
    marker_log_id: str | None  # the log id its workspace marker names
    stamp: Stamp | None  # the last complete copy's record
    written_since: Mapping[str, int]  # per table, rows not written by that copy (or gone since)

    @property
    def holds_rows(self) -> bool:
        """Whether any table holds a row a new, migrated database would not."""
        return any(n for t, n in self.tables.items() if t not in ("_migrations", "meta")) or \
            self.tables.get("meta", 0) > 1


class Target:
    """The migrated PostgreSQL database the log is copied into."""

    def __init__(self, conn: PgGuarded) -> None:
        self.conn = conn
        self.raw = conn.raw

    def columns(self) -> dict[str, dict[str, str]]:
        """Each table of the current schema: its columns and their types (``int8``, ``text``, ``bytea``)."""
        out: dict[str, dict[str, str]] = {}
        for table, col, typ in self.conn.execute(
                "SELECT table_name, column_name, udt_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"):
            out.setdefault(str(table), {})[str(col)] = str(typ)
        return out

    def counts(self, names: list[str]) -> dict[str, int]:
        """Rows per table, now."""
        return {n: int(self._one(sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(n)))) for n in names}

    def meta(self, key: str) -> str | None:
        """One value of the target's ``meta``."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def state(self, names: list[str]) -> TargetState:
        """Rows per table, the log's id, its marker's, the last copy's stamp and what was written since."""
        counts = self.counts(names)
        marker = self.meta(MARKER)
        stamp_text = self.meta(STAMP)
        stamp = Stamp.from_json(stamp_text) if stamp_text else None
        since: dict[str, int] = {}
        if stamp is not None:
            for n in names:
                other = int(self._one(sql.SQL("SELECT COUNT(*) FROM {} WHERE xmin::text <> {}").format(
                    sql.Identifier(n), sql.Literal(stamp.xid))))
                gone = max(stamp.counts.get(n, 0) - (counts[n] - other), 0)
                if other or gone:
                    since[n] = other + gone
        return TargetState(counts, self.meta("log_id"), json.loads(marker).get("log_id") if marker else None,
                           stamp, since)

    def _one(self, query: sql.Composed) -> int:
        try:
            row = self.raw.execute(query).fetchone()
        except psycopg.OperationalError as e:
            raise server_error(self.conn.path, e) from None
        return int(row[0]) if row else 0


def count_problems(expected: Mapping[str, int], got: Mapping[str, int]) -> list[str]:
    """Each table whose row count differs between the SQLite log and PostgreSQL, naming both counts."""
    return [f"{name}: {n} row(s) in the SQLite log, {got.get(name, 0)} in PostgreSQL"
            for name, n in sorted(expected.items()) if got.get(name, 0) != n]


def schema_problems(tables: list[Table], target: Mapping[str, Mapping[str, str]]) -> list[str]:
    """Where the two schemas differ (a table or a column only on one side); both are migrated to one version."""
    out = [f"table {n}: only in PostgreSQL" for n in sorted(set(target) - {t.name for t in tables})]
    for t in tables:
        cols = target.get(t.name)
        if cols is None:
            out.append(f"table {t.name}: only in the SQLite log")
        elif set(t.target_columns) != set(cols):
            out.append(f"table {t.name}: columns {sorted(set(t.target_columns) ^ set(cols))} differ")
    return out


def copy_all(source: Source, target: Target, tables: list[Table], extra_meta: Mapping[str, str], *,
             log_id: str, at: str, progress: Progress) -> Stamp:
    """Replace whatever the target's tables hold with the source's rows, in one transaction; return the stamp.

    ``extra_meta`` (the workspace marker) is written into ``meta`` beside the
    copied rows. Every table's count is verified before the commit: a
    difference raises :class:`DataError` naming the table and both counts,
    and nothing is kept.
    """
    types = target.columns()
    problems = schema_problems(tables, types)
    if problems:
        raise ConfigError(f"{target.conn.path}: the PostgreSQL log's tables differ from the SQLite log's: "
                          + "; ".join(problems))
    names = [t.name for t in tables]
    target.conn.execute("BEGIN")
    try:
        _clear(target, names)
        indexes = _drop_indexes(target)
        digests = {t.name: _copy_table(source, target, t, types[t.name], progress) for t in tables}
        _create_indexes(target, indexes)
        for key, value in extra_meta.items():
            target.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                                "value = excluded.value", (key, value))
        _advance_sequences(target)
        _triggers(target, "ENABLE")
        got = _verify(source, target, tables, extra_meta)
        row = target.conn.execute("SELECT txid_current() % 4294967296").fetchone()
        xid = str(row[0] if row else "")
        stamp = Stamp(log_id, at, xid, digests, {**got, "meta": got["meta"] + 1})
        target.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (STAMP, stamp.to_json()))
    except BaseException:
        with contextlib.suppress(CrmError, psycopg.Error):  # a lost server rolls back by itself; keep the first error
            target.conn.execute("ROLLBACK")
        raise
    target.conn.execute("COMMIT")
    return stamp


def _verify(source: Source, target: Target, tables: list[Table], extra_meta: Mapping[str, str]) -> dict[str, int]:
    """The target's row counts, each equal to the source's (``meta``: plus the keys written beside); else DataError."""
    expected = {t.name: t.rows for t in tables}
    expected["meta"] += sum(source.meta(k) is None for k in extra_meta)
    got = target.counts([t.name for t in tables])
    mismatch = count_problems(expected, got)
    if mismatch:
        raise DataError(f"{target.conn.path}: the copy's row counts differ, nothing was kept: " + "; ".join(mismatch),
                        hint="something on the server changed rows as they were written (a trigger or rule of "
                             "its own?); look at the table named, then copy again")
    return got


def _clear(target: Target, names: list[str]) -> None:
    """Empty every table and switch off schema 10's triggers, inside the copy's transaction."""
    target.raw.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(sql.Identifier(n) for n in names)))
    _triggers(target, "DISABLE")


def _drop_indexes(target: Target) -> list[tuple[str, str]]:
    """Drop the secondary indexes for the copy (in its transaction); return their names and definitions.

    Why: building an index once over the copied rows (a sort) is several
    times faster than updating a dozen indexes row by row (the activities
    have eleven, some on a JSON expression). Primary keys and unique
    constraints stay. Being DDL in the copy's transaction, a copy cut short
    leaves every index as it was.
    """
    found = [(str(n), str(d)) for n, d in target.conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes i WHERE schemaname = current_schema() AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname AND c.connamespace = "
        "(SELECT oid FROM pg_namespace WHERE nspname = current_schema())) ORDER BY indexname")]
    for name, _ in found:
        target.raw.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return found


def _create_indexes(target: Target, indexes: list[tuple[str, str]]) -> None:
    """Build the dropped indexes again over the copied rows (a unique one the rows break: DataError, rolled back)."""
    target.conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    for name, definition in indexes:
        try:
            target.raw.execute(definition.encode())
        except psycopg.IntegrityError as e:
            raise DataError(f"{target.conn.path}: the copied rows break the unique index {name} "
                            f"({str(e).strip()}); nothing was kept") from None


def _triggers(target: Target, how: str) -> None:
    """``ALTER TABLE ... ENABLE|DISABLE TRIGGER`` for schema 10's triggers (transactional, like all DDL here)."""
    for table, names in FOLLOW_UP_TRIGGERS.items():
        for name in names:
            target.raw.execute(sql.SQL("ALTER TABLE {} " + how + " TRIGGER {}").format(
                sql.Identifier(table), sql.Identifier(name)))


def _copy_table(source: Source, target: Target, table: Table, types: Mapping[str, str], progress: Progress) -> str:
    """``COPY`` one table's rows (binary, each value as its column's type); returns the rows' digest."""
    cols = table.target_columns
    query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table.name), sql.SQL(", ").join(sql.Identifier(c) for c in cols))
    h = hashlib.blake2b(digest_size=16)
    bar = progress(f"copy {table.name}", table.rows) if table.rows >= TICK else None
    row: tuple[object, ...] = ()
    try:
        with target.raw.cursor() as cur, cur.copy(query) as cp:
            cp.set_types([types[c] for c in cols])
            for batch in source.batches(table):
                h.update(repr(batch).encode())  # one digest text per batch: the same batches as Source.digest's
                for row in batch:
                    cp.write_row(row)
                if bar is not None and len(batch) == TICK:
                    bar.advance(TICK)
    except psycopg.OperationalError as e:
        raise server_error(target.conn.path, e) from None
    except (psycopg.Error, TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{source.path}: table {table.name}: a row cannot be written to PostgreSQL "
                        f"({type(e).__name__}: {str(e).strip()}; the last row sent begins {_begins(row)}); nothing was "
                        "copied",
                        hint="a text with a NUL character, or a value of another type than its column's; "
                             "correct the row in the SQLite log and copy again") from None
    finally:
        if bar is not None:
            bar.advance(table.rows % TICK)
            bar.close()
    return h.hexdigest()


def _begins(row: tuple[object, ...]) -> str:
    return repr(row[:2])[:80]


def _advance_sequences(target: Target) -> None:
    """Move every identity column's sequence past the largest copied value (the next insert gets a new id)."""
    idents = list(target.conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND is_identity = 'YES'"))
    for table, col in idents:
        target.raw.execute(sql.SQL("SELECT setval(pg_get_serial_sequence({}, {}), COALESCE(MAX({}), 0) + 1, false) "
                                   "FROM {}").format(sql.Literal(sql.Identifier(str(table)).as_string(target.raw)),
                                                     sql.Literal(str(col)), sql.Identifier(str(col)),
                                                     sql.Identifier(str(table))))
