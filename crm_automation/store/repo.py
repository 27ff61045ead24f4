"""The only module that speaks SQL. Every write that must be atomic is one transaction.

Exactly-once rests on three unique keys: inbound activities on
``message_id``, sends on (campaign, step, customer), quarantine on the raw
message's digest; and on moving the mailbox cursor in the same transaction
as the activity it covers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crm_automation.errors import ConfigError, CrmError, ServiceError, StorageError
from crm_automation.models import Customer, CustomerColumns, Kind
from crm_automation.store.migrations import migrate
from crm_automation.store.schema import INBOUND_KINDS

if TYPE_CHECKING:
    from crm_automation.inbound import Decision

NOTIFY_CAMPAIGN = "owner-notify"  # pseudo-campaign: owner notifications reuse the sends table's exactly-once rows

# A bounce activity's permanence: ``details.permanence`` (issue #11), or for rows logged before it,
# ``details.permanent`` (true: hard; false: a delay, as they were treated then).
PERMANENCE_SQL = ("COALESCE(json_extract(a.details, '$.permanence'), "
                  "CASE WHEN json_extract(a.details, '$.permanent') THEN 'hard' ELSE 'delayed' END)")
_dumps = json.JSONEncoder(ensure_ascii=False).encode  # fields keep the mapping's order; readable Chinese
_PLAIN = frozenset({str, int, type(None)})  # values SQLite's json_object renders exactly as Python's json would


def _file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the log file, or None for an in-memory log or a missing file."""
    if path == ":memory:":
        return None
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def iso(dt: datetime) -> str:
    """ISO 8601 UTC text, the log's one time format."""
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    """Inverse of :func:`iso` (accepts any ISO form)."""
    if not text:
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class StoredCustomer:
    """A customer as the log knows it."""

    key: str
    row: int
    data: dict[str, Any]
    first_seen: datetime
    email_status: str
    present: bool


@dataclass(slots=True)
class SyncStats:
    """What one sync changed."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    returned: int = 0
    changes: list[tuple[str, str, Any, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SendRow:
    """One row of ``sends``."""

    id: int
    campaign: str
    step: int
    customer_key: str
    status: str
    message_id: str | None
    queued_at: datetime | None
    sent_at: datetime | None
    error: str | None
    email: str | None
    attempts: int
    next_attempt_at: datetime | None


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
        return ServiceError(f"{path}: the activity log is locked by another program ({e})",
                            hint="close other programs writing to the log (a SQLite browser with unsaved "
                                 "changes); the next pass retries")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return ConfigError(f"{path}: not a crm-automation activity log, or the file is damaged ({e})",
                           hint="restore it from a backup, or point [workspace] database at the right file")
    raise e


class _Guarded:
    """The SQLite connection, with environmental failures turned into :class:`StorageError` (issue #9).

    Why a wrapper: every write in this module can meet a full disk or a
    read-only folder, and a raw ``sqlite3.OperationalError`` reached the user
    as a traceback with exit 1. One place turns them into a message naming
    the file and what to do.
    """

    __slots__ = ("_c", "path")

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._c = conn
        self.path = path

    def execute(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
        try:
            return self._c.execute(sql, args)
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            raise storage_error(self.path, e) from None

    def executemany(self, sql: str, args: Any) -> sqlite3.Cursor:
        try:
            return self._c.executemany(sql, args)
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as e:
            raise storage_error(self.path, e) from None

    @property
    def in_transaction(self) -> bool:
        return self._c.in_transaction

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection itself (tests inject faults through it)."""
        return self._c

    def close(self) -> None:
        self._c.close()


class Store:
    """The activity log. Open with :meth:`open`; one connection per process."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = _Guarded(conn, path)
        self.path = path
        self._savepoints = 0
        self._identity = _file_identity(path)

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open (creating and migrating) the log; WAL mode so readers never block the worker."""
        p = str(path)
        if p != ":memory:":
            try:
                Path(p).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ConfigError(f"{p}: cannot create the database folder: {e.strerror}") from None
        try:
            conn = sqlite3.connect(p, isolation_level=None, timeout=30.0)
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
        except sqlite3.DatabaseError as e:
            conn.close()
            raise storage_error(p, e, "upgrading") from None
        return cls(conn, p)

    def close(self) -> None:
        """Close the connection (checkpointing the WAL)."""
        with suppress(sqlite3.Error):
            self.conn.close()

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

    def log_id(self) -> str:
        """The identity written into the log when it was created (table ``meta``)."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
        return str(row[0]) if row else ""

    def sent_count(self) -> int:
        """How many sends this log records as ``sent``: only ever grows (``sent`` is final, rows are never deleted).

        Sends in ``sending``/``uncertain`` are left out on purpose: crash
        recovery and ``requeue`` move them back to ``queued``.
        """
        return int(self.conn.execute("SELECT COUNT(*) FROM sends WHERE status = 'sent'").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit: everything inside commits together or not at all."""
        if self.conn.in_transaction:
            self._savepoints += 1
            name = f"sp{self._savepoints}"
            self.conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
                raise
            self.conn.execute(f"RELEASE SAVEPOINT {name}")
            return
        self.conn.execute("BEGIN IMMEDIATE")
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

    # ----------------------------------------------------------- customers
    def row_hashes(self) -> dict[str, str]:
        """Hash -> key of customers present at the last sync."""
        return {h: k for k, h in self.conn.execute(
            "SELECT key, row_hash FROM customers WHERE present = 1 AND row_hash IS NOT NULL")}

    def customers(self, *, present_only: bool = True) -> dict[str, StoredCustomer]:
        """All customers (present in the sheet at the last sync, unless asked otherwise)."""
        sql = "SELECT key, row, data, first_seen, email_status, present FROM customers"
        if present_only:
            sql += " WHERE present = 1"
        return {
            k: StoredCustomer(k, r, json.loads(d), parse_iso(fs) or datetime.now(UTC), es or "ok", bool(p))
            for k, r, d, fs, es, p in self.conn.execute(sql)
        }

    def customer(self, key: str) -> StoredCustomer | None:
        """One customer by key, present or not."""
        row = self.conn.execute(
            "SELECT key, row, data, first_seen, email_status, present FROM customers WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        k, r, d, fs, es, p = row
        return StoredCustomer(k, r, json.loads(d), parse_iso(fs) or datetime.now(UTC), es or "ok", bool(p))

    def apply_sync(self, source: str, changed: Sequence[Customer], unchanged: dict[str, int],
                   hashes: dict[str, str], now: datetime, *, complete: bool = True) -> SyncStats:
        """Record new customers and field changes; mark rows that disappeared.

        ``complete`` is False when the sheet could not be fully mapped (a
        required column missing): then nobody is marked removed.
        """
        stats = SyncStats(unchanged=len(unchanged))
        ts = iso(now)
        with self.transaction():
            existing = {k: (d, p) for k, d, p in self.conn.execute("SELECT key, data, present FROM customers")}
            acts: list[tuple[Any, ...]] = []
            new: list[Customer] = []
            fresh: list[Customer] | CustomerColumns = new
            if isinstance(changed, CustomerColumns) and not existing.keys() & set(changed.keys):
                fresh, changed = changed, []  # all new (a first sync): inserted column by column
            for c in changed:
                old = existing.get(c.key)
                if old is None:
                    new.append(c)
                    continue
                data_json = _dumps(c.data)
                old_json, present = old
                old_data = json.loads(old_json)
                diffs = {f: (old_data.get(f), v) for f, v in c.data.items() if old_data.get(f) != v}
                for f, (a, b) in diffs.items():
                    acts.append((c.key, Kind.FIELD_CHANGED.value, ts, None, None, source,
                                 json.dumps({"field": f, "old": a, "new": b, "row": c.row}, ensure_ascii=False)))
                    stats.changes.append((c.key, f, a, b))
                if not present:
                    stats.returned += 1
                    acts.append((c.key, Kind.CUSTOMER_ADDED.value, ts, None, None, source,
                                 json.dumps({"row": c.row, "returned": True}, ensure_ascii=False)))
                if diffs:
                    stats.changed += 1
                self.conn.execute(
                    "UPDATE customers SET row = ?, data = ?, row_hash = ?, present = 1, removed_at = NULL"
                    + (", last_changed = ?" if diffs else "") + " WHERE key = ?",
                    (c.row, data_json, hashes.get(c.key), *((ts,) if diffs else ()), c.key))
            if fresh:
                before = self.conn.execute("SELECT coalesce(max(rowid), 0) FROM customers").fetchone()[0]
                self._insert_customers(fresh, hashes, ts)
                # Their customer_added activities, written by SQLite from the rows just inserted: rowids only
                # grow, and the rows went in sorted by key, so rowid order is key order.
                self.conn.execute(
                    "INSERT INTO activities (customer_key, kind, occurred_at, source, details, logged_at) "
                    "SELECT key, ?, ?, ?, json_object('row', row), ? FROM customers WHERE rowid > ? ORDER BY rowid",
                    (Kind.CUSTOMER_ADDED.value, ts, source, ts, before))
                stats.added = len(fresh)
            if unchanged:
                self.conn.executemany("UPDATE customers SET row = ? WHERE key = ? AND row != ?",
                                      [(r, k, r) for k, r in unchanged.items()])
            if complete:
                seen = set(unchanged)
                seen.update(c.key for c in changed)
                gone = [k for k, (_, p) in existing.items() if p and k not in seen]
                for k in gone:
                    self.conn.execute("UPDATE customers SET present = 0, removed_at = ? WHERE key = ?", (ts, k))
                    acts.append((k, Kind.CUSTOMER_REMOVED.value, ts, None, None, source,
                                 json.dumps({"note": "row no longer in the sheet; history kept"})))
                stats.removed = len(gone)
            acts.sort(key=lambda a: a[0])
            self.conn.executemany(
                "INSERT INTO activities (customer_key, kind, occurred_at, subject, body, source, details, logged_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(*a, ts) for a in acts])
        return stats

    def _insert_customers(self, fresh: list[Customer] | CustomerColumns, hashes: dict[str, str], ts: str) -> None:
        """Insert new customers, SQLite building each ``data`` JSON with ``json_object``.

        Why: encoding 100,000 small dicts in Python was a fifth of a first
        sync (issue #3). Text, empty and 64-bit integer values are bound as
        they are; any other value (bool, float, a huge int) is bound as JSON
        text from Python's encoder through ``json(?)``, so what is read back
        is exactly what was validated.
        """
        # Key order keeps the primary-key B-tree appending instead of splitting pages.
        groups: list[tuple[tuple[str, ...], list[str], list[int], list[list[Any]]]] = []
        if isinstance(fresh, CustomerColumns):
            order = sorted(range(len(fresh)), key=fresh.keys.__getitem__)
            by_name = dict(zip(fresh.names, fresh.columns, strict=True))
            groups.append((fresh.fields, [fresh.keys[i] for i in order], [fresh.rows[i] for i in order],
                           [[col[i] for i in order] if (col := by_name.get(n)) is not None else [None] * len(order)
                            for n in fresh.fields]))
        else:
            by_fields: dict[tuple[str, ...], list[Customer]] = {}
            for c in sorted(fresh, key=lambda c: c.key):
                by_fields.setdefault(tuple(c.data), []).append(c)
            groups = [(names, [c.key for c in g], [c.row for c in g], [[c.data[n] for c in g] for n in names])
                      for names, g in by_fields.items()]
        for names, keys, rows, columns in groups:
            exprs = []
            for col in columns:
                kinds = {v.__class__ for v in col}
                plain = kinds <= _PLAIN and (int not in kinds or all(
                    -(2**63) <= v < 2**63 for v in col if v.__class__ is int))
                if not plain:
                    col[:] = [_dumps(v) for v in col]
                exprs.append("?" if plain else "json(?)")
            obj = ", ".join(f"'{n.replace(chr(39), chr(39) * 2)}', {e}" for n, e in zip(names, exprs, strict=True))
            at = "'" + ts.replace("'", "''") + "'"  # the same for every row: a literal, not 2 parameters a row
            self.conn.executemany(
                "INSERT INTO customers (key, row, data, row_hash, first_seen, last_changed, email_status, present) "
                f"VALUES (?, ?, json_object({obj}), ?, {at}, {at}, 'ok', 1)",
                zip(keys, rows, *columns, [hashes.get(k) for k in keys], strict=True))

    def sheet_state(self, source: str) -> tuple[str, int, list[str], list[str]] | None:
        """(fingerprint, rows, problems, notes) recorded at the last complete sync of ``source``.

        ``notes`` are the cells kept blank (issue #11), reported again when an
        unchanged sheet is skipped; the column holds a JSON list of problems,
        or an object with both when there are notes.
        """
        row = self.conn.execute("SELECT fingerprint, rows, problems FROM sheet_state WHERE source = ?",
                                (source,)).fetchone()
        if row is None:
            return None
        saved = json.loads(row[2] or "[]")
        if isinstance(saved, dict):
            return row[0], row[1] or 0, list(saved.get("problems", [])), list(saved.get("notes", []))
        return row[0], row[1] or 0, list(saved), []

    def set_sheet_state(self, source: str, fingerprint: str | None, rows: int, problems: list[str],
                        now: datetime, notes: list[str] | None = None) -> None:
        """Remember the sheet's digest after a complete sync (None forgets it)."""
        if fingerprint is None:
            self.conn.execute("DELETE FROM sheet_state WHERE source = ?", (source,))
            return
        saved: list[str] | dict[str, list[str]] = {"problems": problems, "notes": notes} if notes else problems
        self.conn.execute(
            "INSERT INTO sheet_state (source, fingerprint, synced_at, rows, problems) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(source) DO UPDATE SET fingerprint = excluded.fingerprint, synced_at = excluded.synced_at, "
            "rows = excluded.rows, problems = excluded.problems",
            (source, fingerprint, iso(now), rows, json.dumps(saved, ensure_ascii=False)))

    def set_email_status(self, key: str, status: str) -> None:
        """``ok`` | ``bounced`` | ``unsubscribed`` (shown in the sheet's status column)."""
        self.conn.execute("UPDATE customers SET email_status = ? WHERE key = ?", (status, key))

    def set_status_by_email(self, emails: Iterable[str], status: str) -> int:
        """Set ``email_status`` of the customers whose key is one of ``emails`` (suppress add/remove)."""
        n = 0
        for e in emails:
            n += self.conn.execute("UPDATE customers SET email_status = ? WHERE key = ?",
                                   (status, e.strip().lower())).rowcount
        return n

    def keys_by_email(self, email_fields: Iterable[str]) -> dict[str, str]:
        """Address -> customer key, over the key and every other email field."""
        out: dict[str, str] = {}
        fields = list(email_fields)
        for key, data in self.conn.execute("SELECT key, data FROM customers ORDER BY present ASC, first_seen DESC"):
            d = json.loads(data)
            for f in fields:
                v = d.get(f)
                if isinstance(v, str) and v:
                    out[v.lower()] = key
        return out

    # ----------------------------------------------------------- inbound
    def mailbox_cursor(self, folder: str) -> tuple[int, int] | None:
        """(uidvalidity, last_uid) for a folder, or None before the first fetch."""
        row = self.conn.execute("SELECT uidvalidity, last_uid FROM mailbox_state WHERE folder = ?",
                                (folder,)).fetchone()
        return (row[0], row[1]) if row else None

    def set_cursor(self, folder: str, uidvalidity: int, last_uid: int, now: datetime) -> None:
        """Move a folder's cursor (call inside the transaction that logs the message)."""
        self.conn.execute(
            "INSERT INTO mailbox_state (folder, uidvalidity, last_uid, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(folder) DO UPDATE SET uidvalidity = excluded.uidvalidity, last_uid = excluded.last_uid, "
            "updated_at = excluded.updated_at", (folder, uidvalidity, last_uid, iso(now)))

    def add_activity(self, *, kind: str, occurred_at: datetime, now: datetime, customer_key: str | None = None,
                     subject: str | None = None, body: str | None = None, message_id: str | None = None,
                     in_reply_to: str | None = None, campaign: str | None = None, step: int | None = None,
                     source: str | None = None, details: dict[str, Any] | None = None,
                     digest: str | None = None) -> int | None:
        """Insert one activity; returns its id, or None for an inbound message already logged.

        An inbound message (``digest`` given) is "already logged" when its
        Message-ID was logged with the same content digest, or by a version
        before digests were kept. The same Message-ID with *different*
        content is a different message and is logged too (issue #9: some
        mailers reuse ids; dropping the second message lost it).
        """
        if digest is not None and message_id is not None:
            kinds = ",".join("?" * len(INBOUND_KINDS))
            for (d,) in self.conn.execute(
                    f"SELECT digest FROM activities WHERE message_id = ? AND kind IN ({kinds})",
                    (message_id, *INBOUND_KINDS)):
                if d is None or d == digest:
                    return None
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO activities (customer_key, kind, occurred_at, subject, body, message_id, "
            "in_reply_to, campaign, step, source, details, logged_at, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (customer_key, kind, iso(occurred_at), subject, body, message_id, in_reply_to, campaign, step, source,
             json.dumps(details or {}, ensure_ascii=False), iso(now), digest))
        return cur.lastrowid if cur.rowcount else None

    def apply_inbound(self, d: Decision, now: datetime, *, soft_days: int, soft_limit: int) -> bool:
        """Record one fetched message's decision and move the folder's cursor, in one transaction.

        Returns whether anything new was recorded (False: every activity was
        already logged). Effects, the soft-bounce score (issue #11) and an
        owner notification apply only to activities that are new.
        """
        from datetime import timedelta

        from crm_automation.effects import bounce_effects

        logged = False
        with self.transaction():
            q = d.quarantine
            if q is not None:
                self.quarantine(source=q.source, raw=q.raw, error=q.error, now=now, from_addr=q.from_addr,
                                customer_key=q.customer_key, size=q.size)
            for a in d.activities:
                aid = self.add_activity(kind=a.kind.value, occurred_at=a.occurred_at, now=now,
                                        customer_key=a.customer_key, subject=a.subject, body=a.body,
                                        message_id=a.message_id, in_reply_to=a.in_reply_to, campaign=a.campaign,
                                        step=a.step, source=a.source, details=a.details, digest=a.digest)
                if aid is None:
                    continue
                logged = True
                for eff, key in a.effects:
                    self.suppress(eff.email, eff.reason, f"{a.kind.value} {a.message_id}", now)
                    if eff.status and key is not None:
                        self.set_email_status(key, eff.status)
                if a.scored is not None and soft_limit:
                    n = self.soft_bounce_count(a.scored.address, a.customer_key, now - timedelta(days=soft_days))
                    for eff in bounce_effects(a.scored, soft_count=n, soft_limit=soft_limit):
                        self.suppress(eff.email, eff.reason,
                                      f"{n} soft bounces within {soft_days} days (last {a.message_id})", now)
                        if eff.status and a.customer_key is not None:
                            self.set_email_status(a.customer_key, eff.status)
                if a.notify_owner is not None and a.customer_key is not None:
                    owner, mid = a.notify_owner
                    self.queue_sends([{"campaign": NOTIFY_CAMPAIGN, "step": aid, "customer_key": a.customer_key,
                                       "status": "queued", "message_id": mid, "queued_at": iso(now), "error": None,
                                       "email": owner}])
            self.set_cursor(d.folder, d.uidvalidity, d.uid, now)
            if d.seen_key is not None:
                self.mark_maildir_seen(d.folder, d.seen_key)
        return logged

    def maildir_seen(self, folder: str) -> frozenset[str]:
        """Base names of the Maildir files of ``folder`` already logged or quarantined."""
        return frozenset(n for (n,) in self.conn.execute("SELECT name FROM maildir_seen WHERE folder = ?",
                                                          (folder,)))

    def mark_maildir_seen(self, folder: str, name: str) -> None:
        """Record a Maildir file as logged (call inside the transaction that logs it)."""
        self.conn.execute("INSERT OR IGNORE INTO maildir_seen (folder, name) VALUES (?, ?)", (folder, name))

    def relink_inbound(self, index: dict[str, str], now: datetime) -> int:
        """Attach inbound activities and quarantined messages logged without a customer, by address (issue #9).

        ``index`` maps address -> customer key. Called after a sync that
        added customers: a lead who wrote before being added to the sheet
        gets that enquiry in their history, so a ``new`` campaign can see it
        and follow-ups stop. The activity is updated (``details.matched_by``
        says when and how), not logged again. An address suppressed while it
        was unknown gives the customer its email status.
        """
        kinds = ",".join("?" * len(INBOUND_KINDS))
        rows = self.conn.execute(
            f"SELECT id, kind, details FROM activities WHERE customer_key IS NULL AND kind IN ({kinds})",
            INBOUND_KINDS).fetchall()
        qrows = self.conn.execute(
            "SELECT id, from_addr FROM quarantine WHERE customer_key IS NULL AND from_addr IS NOT NULL").fetchall()
        if not rows and not qrows:
            return 0
        ts = iso(now)
        linked: set[str] = set()
        n = 0
        with self.transaction():
            for aid, kind, details in rows:
                d = json.loads(details or "{}")
                addrs = list(d.get("recipients") or []) if kind == Kind.BOUNCE.value else [d.get("from") or ""]
                key = next((k for a in addrs if (k := index.get(str(a).lower())) is not None), None)
                if key is None:
                    continue
                d["matched_by"] = f"address, when the customer was added ({ts})"
                self.conn.execute("UPDATE activities SET customer_key = ?, details = ? WHERE id = ?",
                                  (key, json.dumps(d, ensure_ascii=False), aid))
                linked.add(key)
                n += 1
            for qid, addr in qrows:
                key = index.get(str(addr).lower())
                if key is not None:
                    self.conn.execute("UPDATE quarantine SET customer_key = ? WHERE id = ?", (key, qid))
                    n += 1
            statuses = {"unsubscribed": "unsubscribed", "bounced": "bounced"}
            for addr, (reason, _, _) in self.suppressions().items():
                key = index.get(addr)
                if key in linked and reason in statuses:
                    self.set_email_status(key, statuses[reason])
        return n

    def quarantine(self, *, source: str, raw: bytes, error: str, now: datetime, from_addr: str | None = None,
                   customer_key: str | None = None, size: int | None = None) -> bool:
        """Keep a message that could not be understood; False if it is already there.

        ``raw`` is the whole message, or its first ``max_message_bytes`` when
        it is larger (``size`` then says how large it was; the message itself
        stays in the mailbox). ``from_addr``/``customer_key``: whose it was,
        as far as its headers tell, so it counts as the customer's contact.
        """
        digest = hashlib.sha256(raw).hexdigest()
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO quarantine (source, received_at, error, raw, digest, from_addr, customer_key, "
            "size) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (source, iso(now), error, raw, digest, from_addr, customer_key, size if size is not None else len(raw)))
        return cur.rowcount > 0

    def quarantined_contacts(self) -> list[tuple[str, datetime, str]]:
        """(customer, received_at, error) of quarantined messages from known customers."""
        return [(k, parse_iso(t) or datetime.now(UTC), e) for k, t, e in self.conn.execute(
            "SELECT customer_key, received_at, error FROM quarantine WHERE customer_key IS NOT NULL ORDER BY id")]

    def sent_message_ids(self, ids: Iterable[str]) -> dict[str, tuple[str, str, int]]:
        """Message-ID -> (customer, campaign, step) for ids the worker sent."""
        out: dict[str, tuple[str, str, int]] = {}
        for mid in ids:
            row = self.conn.execute("SELECT customer_key, campaign, step FROM sends WHERE message_id = ?",
                                    (mid,)).fetchone()
            if row:
                out[mid] = (row[0], row[1], row[2])
        return out

    def activity(self, activity_id: int) -> dict[str, Any] | None:
        """One activity by id."""
        cols = ["id", "customer_key", "kind", "occurred_at", "subject", "body", "message_id", "details"]
        row = self.conn.execute(f"SELECT {', '.join(cols)} FROM activities WHERE id = ?", (activity_id,)).fetchone()
        return dict(zip(cols, row, strict=True)) if row else None

    # ----------------------------------------------------------- suppressions
    def suppress(self, email: str, reason: str, source: str, now: datetime) -> bool:
        """Add an address to the suppression list; False when it was already there."""
        cur = self.conn.execute("INSERT OR IGNORE INTO suppressions (email, reason, at, source) VALUES (?,?,?,?)",
                                (email.strip().lower(), reason, iso(now), source))
        return cur.rowcount > 0

    def unsuppress(self, email: str) -> bool:
        """Remove an address from the suppression list."""
        cur = self.conn.execute("DELETE FROM suppressions WHERE email = ?", (email.strip().lower(),))
        return cur.rowcount > 0

    def suppressions(self) -> dict[str, tuple[str, str, str]]:
        """Email -> (reason, at, source)."""
        return {e: (r, a, s) for e, r, a, s in self.conn.execute(
            "SELECT email, reason, at, source FROM suppressions ORDER BY at")}

    # ----------------------------------------------------------- campaigns and sends
    def campaign_first_seen(self, ids: Iterable[str], now: datetime, *, record: bool = True) -> dict[str, datetime]:
        """When each campaign was first seen (recording ``now`` for new ones unless ``record`` is False)."""
        ids = list(ids)
        if not record:
            known = {i: parse_iso(fs) or now for i, fs in self.conn.execute("SELECT id, first_seen FROM campaigns")}
            return {i: known.get(i, now) for i in ids}
        with self.transaction():
            self.conn.executemany("INSERT OR IGNORE INTO campaigns (id, first_seen) VALUES (?, ?)",
                                  [(i, iso(now)) for i in ids])
        return {i: parse_iso(fs) or now for i, fs in self.conn.execute("SELECT id, first_seen FROM campaigns")
                if i in ids}

    def _send(self, r: tuple[Any, ...]) -> SendRow:
        return SendRow(r[0], r[1], r[2], r[3], r[4], r[5], parse_iso(r[6]), parse_iso(r[7]), r[8], r[9], r[10] or 0,
                       parse_iso(r[11]))

    _SEND_COLS = ("id, campaign, step, customer_key, status, message_id, queued_at, sent_at, error, email, attempts, "
                  "next_attempt_at")

    def sends(self, *, status: Iterable[str] | None = None, campaign: str | None = None) -> list[SendRow]:
        """Send rows, oldest first."""
        sql = f"SELECT {self._SEND_COLS} FROM sends"
        cond, args = [], []
        if status is not None:
            st = list(status)
            cond.append(f"status IN ({','.join('?' * len(st))})")
            args += st
        if campaign is not None:
            cond.append("campaign = ?")
            args.append(campaign)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        return [self._send(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def send_keys(self) -> set[tuple[str, int, str]]:
        """Every (campaign, step, customer) that has a sends row, whatever its status."""
        return {(c, s, k) for c, s, k in self.conn.execute("SELECT campaign, step, customer_key FROM sends")}

    def queue_sends(self, rows: list[dict[str, Any]]) -> int:
        """Insert planned sends (queued or skipped) in one transaction; existing keys are left alone."""
        with self.transaction():
            cur = self.conn.executemany(
                "INSERT OR IGNORE INTO sends (campaign, step, customer_key, status, message_id, queued_at, error, "
                "email, attempts) VALUES (:campaign, :step, :customer_key, :status, :message_id, :queued_at, "
                ":error, :email, 0)", rows)
        return cur.rowcount

    def mark_sending(self, send_id: int, message_id: str, now: datetime) -> bool:
        """Queued -> sending, committed before the message is handed over. False if it was not queued."""
        cur = self.conn.execute(
            "UPDATE sends SET status = 'sending', message_id = ?, attempts = attempts + 1, next_attempt_at = ? "
            "WHERE id = ? AND status = 'queued'", (message_id, iso(now), send_id))
        return cur.rowcount == 1

    def mark_sent(self, send_id: int, now: datetime, *, customer_key: str, campaign: str, step: int,
                  message_id: str, subject: str, body: str, source: str) -> None:
        """Sending -> sent, with the email_out activity, in one transaction."""
        with self.transaction():
            self.conn.execute("UPDATE sends SET status = 'sent', sent_at = ?, error = NULL WHERE id = ?",
                              (iso(now), send_id))
            self.add_activity(kind=Kind.EMAIL_OUT.value, occurred_at=now, now=now, customer_key=customer_key,
                              subject=subject, body=body, message_id=message_id, campaign=campaign, step=step,
                              source=source)

    def mark_retry(self, send_id: int, error: str, next_attempt: datetime) -> None:
        """Sending -> queued after a 4xx answer: retried at ``next_attempt``."""
        self.conn.execute("UPDATE sends SET status = 'queued', error = ?, next_attempt_at = ? WHERE id = ?",
                          (error, iso(next_attempt), send_id))

    def mark_failed(self, send_id: int, error: str, now: datetime, *, customer_key: str, campaign: str,
                    step: int) -> None:
        """A 5xx answer or a message that cannot be built: failed, with a send_failed activity."""
        with self.transaction():
            self.conn.execute("UPDATE sends SET status = 'failed', error = ? WHERE id = ?", (error, send_id))
            self.add_activity(kind=Kind.SEND_FAILED.value, occurred_at=now, now=now, customer_key=customer_key,
                              campaign=campaign, step=step, source="outbound", details={"error": error})

    def mark_status(self, send_id: int, status: str, error: str | None = None, *, sent_at: datetime | None = None
                    ) -> None:
        """Set a send's status directly (crash recovery and ``requeue``)."""
        self.conn.execute("UPDATE sends SET status = ?, error = ?, sent_at = COALESCE(?, sent_at) WHERE id = ?",
                          (status, error, iso(sent_at) if sent_at else None, send_id))

    def requeue_problems(self, ids: list[int], statuses: tuple[str, ...]) -> list[str]:
        """Why some of ``ids`` cannot be requeued: unknown ids, or sends not in one of ``statuses``."""
        out = []
        for i in ids:
            row = self.conn.execute("SELECT status, campaign, step, customer_key FROM sends WHERE id = ?",
                                    (i,)).fetchone()
            if row is None:
                out.append(f"send #{i} does not exist (`crm-automation report --json` lists the ids of sends "
                           "that need attention)")
            elif row[0] not in statuses:
                out.append(f"send #{i} ({row[1]}/{row[2]} to {row[3]}) is {row[0]}, not "
                           f"{' or '.join(statuses)}: nothing to requeue")
        return out

    def requeue(self, ids: list[int] | None, statuses: tuple[str, ...] = ("uncertain", "failed")) -> int:
        """Put uncertain/failed sends back in the queue on purpose (the admin's decision)."""
        with self.transaction():
            if ids:
                q = ",".join("?" * len(ids))
                cur = self.conn.execute(
                    f"UPDATE sends SET status = 'queued', next_attempt_at = NULL WHERE id IN ({q}) "
                    f"AND status IN ({','.join('?' * len(statuses))})", (*ids, *statuses))
            else:
                cur = self.conn.execute(
                    f"UPDATE sends SET status = 'queued', next_attempt_at = NULL "
                    f"WHERE status IN ({','.join('?' * len(statuses))})", statuses)
        return cur.rowcount

    def sent_count_since(self, since: datetime) -> int:
        """Messages handed over since ``since`` (sent, sending, uncertain): for max_per_day/minute."""
        count: int = self.conn.execute(
            "SELECT COUNT(*) FROM sends WHERE status IN ('sent', 'sending', 'uncertain') AND "
            "COALESCE(sent_at, next_attempt_at) >= ?", (iso(since),)).fetchone()[0]
        return count

    def sent_times_since(self, since: datetime) -> list[datetime]:
        """Hand-over times since ``since``, oldest first (rate limits across restarts)."""
        return [t for (s,) in self.conn.execute(
            "SELECT COALESCE(sent_at, next_attempt_at) AS t FROM sends WHERE status IN ('sent','sending','uncertain') "
            "AND t >= ? ORDER BY t", (iso(since),)) if (t := parse_iso(s)) is not None]

    def inbound_history(self) -> list[tuple[str, str, datetime, str | None, str | None]]:
        """(customer, kind, logged_at, details, campaign) of inbound activities matched to a customer."""
        kinds = ",".join("?" * len(INBOUND_KINDS))
        return [(k, kind, parse_iso(t) or datetime.now(UTC), d, c) for k, kind, t, d, c in self.conn.execute(
            f"SELECT customer_key, kind, COALESCE(logged_at, occurred_at), details, campaign FROM activities "
            f"WHERE customer_key IS NOT NULL AND kind IN ({kinds})", INBOUND_KINDS)]

    def soft_bounce_count(self, address: str, key: str | None, since: datetime) -> int:
        """Distinct messages to ``address`` that soft-bounced or were delayed since ``since`` and the last reply.

        Issue #11: a reply proves the address works and starts the count again.

        A message is the bounced one (``details.original_message_id``) when
        the report named it, else the bounce itself: a delay warning and the
        later failure of the same message count once.
        """
        if key is not None:
            last = self.conn.execute("SELECT MAX(COALESCE(logged_at, occurred_at)) FROM activities "
                                     "WHERE kind = 'email_in' AND customer_key = ?", (key,)).fetchone()[0]
        else:
            last = self.conn.execute("SELECT MAX(COALESCE(logged_at, occurred_at)) FROM activities WHERE kind = "
                                     "'email_in' AND json_extract(details, '$.from') = ?", (address,)).fetchone()[0]
        start = max(iso(since), last or "")
        return int(self.conn.execute(
            "SELECT COUNT(DISTINCT COALESCE(json_extract(details, '$.original_message_id'), message_id)) "
            "FROM activities WHERE kind = 'bounce' AND json_extract(details, '$.recipient') = ? "
            "AND json_extract(details, '$.permanence') IN ('soft', 'delayed') "
            "AND COALESCE(logged_at, occurred_at) >= ? AND (? = '' OR COALESCE(logged_at, occurred_at) > ?)",
            (address, start, last or "", last or "")).fetchone()[0])

    def field_changes(self, field_name: str) -> list[tuple[str, Any, datetime]]:
        """(customer, new value, when) for each change of one field."""
        out = []
        for k, d, t in self.conn.execute(
                "SELECT customer_key, details, occurred_at FROM activities WHERE kind = 'field_changed' "
                "AND json_extract(details, '$.field') = ? ORDER BY id", (field_name,)):
            out.append((k, json.loads(d).get("new"), parse_iso(t) or datetime.now(UTC)))
        return out

    # ----------------------------------------------------------- runs, reports
    def start_run(self, job: str, now: datetime) -> int:
        """Record that a job started."""
        cur = self.conn.execute("INSERT INTO runs (job, started_at, ok) VALUES (?, ?, NULL)", (job, iso(now)))
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, now: datetime, *, ok: bool, stats: dict[str, Any], error: str | None) -> None:
        """Record how a job ended."""
        self.conn.execute("UPDATE runs SET finished_at = ?, ok = ?, stats = ?, error = ? WHERE id = ?",
                          (iso(now), int(ok), json.dumps(stats, ensure_ascii=False, default=str), error, run_id))

    def timeline(self, key: str) -> list[dict[str, Any]]:
        """One customer's activities, oldest first."""
        cols = ["id", "kind", "occurred_at", "subject", "body", "message_id", "campaign", "step", "source", "details"]
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM activities WHERE customer_key = ? "
                                 f"ORDER BY occurred_at, id", (key,)).fetchall()
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def last_times(self) -> tuple[dict[str, datetime], dict[str, datetime]]:
        """Per customer: time of the last email sent and of the last reply."""
        sent = {k: t for k, s in self.conn.execute(
            "SELECT customer_key, MAX(sent_at) FROM sends WHERE status = 'sent' AND campaign != 'owner-notify' "
            "GROUP BY customer_key")
            if (t := parse_iso(s))}
        replied = {k: t for k, s in self.conn.execute(
            "SELECT customer_key, MAX(occurred_at) FROM activities WHERE kind = 'email_in' AND customer_key "
            "IS NOT NULL GROUP BY customer_key") if (t := parse_iso(s))}
        return sent, replied

    def funnel(self) -> list[dict[str, Any]]:
        """Per campaign and step: counts by status, plus bounced/replied/unsubscribed after the send."""
        out = []
        rows = self.conn.execute(
            "SELECT campaign, step, status, COUNT(*) FROM sends GROUP BY campaign, step, status "
            "ORDER BY campaign, step")
        table: dict[tuple[str, int], dict[str, Any]] = {}
        for c, s, st, n in rows:
            d = table.setdefault((c, s), {"campaign": c, "step": s, "queued": 0, "sending": 0, "sent": 0,
                                          "failed": 0, "uncertain": 0, "skipped": 0})
            d[st] = n
        # "bounced" counts what the planner and the suppressions treat as bounced (issue #11): a hard bounce,
        # or a lost message (soft) of this campaign or of an unknown one; a delay warning is not a bounce.
        bounced = (f"a.kind = 'bounce' AND {PERMANENCE_SQL} != 'delayed' AND ({PERMANENCE_SQL} = 'hard' OR "
                   "a.campaign IS NULL OR a.campaign = s.campaign)")
        for (c, s), d in table.items():
            for cond, col in ((bounced, "bounced"), ("a.kind = 'email_in'", "replied"),
                              ("a.kind = 'unsubscribe'", "unsubscribed")):
                d[col] = self.conn.execute(
                    "SELECT COUNT(DISTINCT s.customer_key) FROM sends s JOIN activities a ON a.customer_key = "
                    f"s.customer_key WHERE s.campaign = ? AND s.step = ? AND s.status = 'sent' AND {cond} "
                    "AND COALESCE(a.logged_at, a.occurred_at) > s.sent_at", (c, s)).fetchone()[0]
            d["reply_rate"] = round(d["replied"] / d["sent"], 4) if d["sent"] else 0.0
            out.append(d)
        return out

    def counts(self) -> dict[str, int]:
        """Row counts per table (for --json summaries and tests)."""
        return {t: self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("customers", "activities", "sends", "suppressions", "quarantine")}

