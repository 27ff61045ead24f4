"""Customers: the sheet's rows as the log knows them, each sync's changes, the sheet's digest, email status.

Syncing is the one bulk write of the log (100,000 rows on a first sync,
issue #3): :meth:`CustomerLog.apply_sync` writes it in one transaction, new
rows column by column through SQLite's ``json_object``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from crm_automation.models import (
    Customer,
    CustomerAddedDetails,
    CustomerColumns,
    CustomerRemovedDetails,
    EmailStatus,
    FieldChangedDetails,
    Kind,
)
from crm_automation.store.connection import Connection, Driver, iso, parse_iso

_dumps = json.JSONEncoder(ensure_ascii=False).encode  # fields keep the mapping's order; readable Chinese
# A customer_added activity's details (CustomerAddedDetails) as SQLite's json_object('row', row) wrote them
# (compact): spelled in SQL both engines read alike (issue #20).
_ROW_DETAILS = "'{\"row\":' || row || '}'"
_PLAIN = frozenset({str, int, type(None)})  # values SQLite's json_object renders exactly as Python's json would
# An activity written by a sync: (customer key, kind, occurred_at, subject, body, source, details JSON).
_SyncActivity = tuple[str, str, str, None, None, str, str]


@dataclass(frozen=True, slots=True)
class StoredCustomer:
    """A customer as the log knows it."""

    key: str
    row: int
    data: dict[str, Any]
    first_seen: datetime
    email_status: EmailStatus
    present: bool


@dataclass(slots=True)
class SyncStats:
    """What one sync changed."""

    added: int = 0
    changed: int = 0
    unchanged: int = 0
    removed: int = 0
    returned: int = 0
    changes: list[tuple[str, str, object, object]] = field(default_factory=list)  # (key, field, old, new)


@dataclass(frozen=True, slots=True)
class SheetState:
    """What the last complete sync of a sheet recorded: its digest, and what it reported.

    ``notes`` are the cells kept blank (issue #11), reported again when an
    unchanged sheet is skipped; ``rejected`` the rows the problems rejected
    (issue #17: a row with several bad cells is one), None when recorded by
    an earlier version.
    """

    fingerprint: str
    rows: int
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    rejected: int | None = None


KEY_FIELD_META = "customer_key_field"
"""``meta`` row: the mapping field the customers' keys were built from (issue #17)."""
_REKEY_PREFIX = "\x1frekey\x1f"  # a key being moved in a swap; no cell of a sheet starts with a unit separator


@dataclass(frozen=True, slots=True)
class RekeyCounts:
    """How many rows of each table a re-key moves (or would move), by table name."""

    tables: dict[str, int]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def update_email_status(conn: Driver, key: str, status: EmailStatus) -> None:
    """Set one customer's ``email_status`` (no transaction: the caller's unit owns it)."""
    conn.execute("UPDATE customers SET email_status = ? WHERE key = ?", (status, key))


class CustomerLog(Connection):
    """The store's part that records customers (tables ``customers`` and ``sheet_state``)."""

    def key_field(self) -> str | None:
        """The mapping field the log's customer keys were built from, or None when not recorded yet."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (KEY_FIELD_META,)).fetchone()
        return str(row[0]) if row else None

    def set_key_field(self, name: str) -> None:
        """Record the mapping field the customer keys are built from (the first sync, or an older log adopting one)."""
        with self.transaction():
            self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                              "value = excluded.value", (KEY_FIELD_META, name))

    def has_customers(self) -> bool:
        """Whether any customer was ever recorded."""
        return self.conn.execute("SELECT 1 FROM customers LIMIT 1").fetchone() is not None

    def _keyed_columns(self) -> list[tuple[str, str]]:
        """(table, column) of every customer key: ``customers.key`` and each table's ``customer_key``.

        Found from the schema rather than listed, so a table a later migration
        adds with a ``customer_key`` column is re-keyed too.
        """
        return [("customers", "key"), *((t, "customer_key") for (t,) in self.conn.execute(
            self.dialect.tables_with_column, ("customer_key",)))]

    def rekey(self, moves: Sequence[tuple[str, str, object]], key_field: str, *, dry_run: bool = False) -> RekeyCounts:
        """Give customers new keys in every table, in one transaction; ``moves`` are (old, new, new field value).

        Also sets each moved customer's ``key_field`` to its value (so the next
        sync sees no change of it), records ``key_field`` as the log's key
        field, and forgets the sheet's digest (the next sync reads the sheet).
        A swap (one customer's new key is another's old one) goes through a
        temporary key, so no unique index meets a duplicate half-way.
        ``dry_run`` counts the rows that would move and changes nothing.
        """
        pairs = [(o, n) for o, n, _ in moves if o != n]
        counts: dict[str, int] = {}
        targets = self._keyed_columns()
        if dry_run:  # reads only: a dry run's log is read-only (no temporary table either)
            olds = {o for o, _ in pairs}
            for table, col in targets:
                counts[table] = sum(n for k, n in self.conn.execute(
                    f"SELECT {col}, COUNT(*) FROM {_quoted(table)} GROUP BY {col}") if k in olds)
            return RekeyCounts(counts)
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS rekey_moves (old TEXT PRIMARY KEY, new TEXT NOT NULL)")
        # Unqualified: a temporary table is found first on both engines (SQLite's temp, PostgreSQL's pg_temp).
        self.conn.execute("DELETE FROM rekey_moves")
        self.conn.executemany("INSERT INTO rekey_moves (old, new) VALUES (?, ?)", pairs)
        try:
            swap = bool({n for _, n in pairs} & {o for o, _ in pairs})
            prefix = _REKEY_PREFIX if swap else ""
            with self.transaction():
                for table, col in targets:
                    t = _quoted(table)  # col is "key" or "customer_key" (see _keyed_columns)
                    counts[table] = self.conn.execute(
                        f"UPDATE {t} SET {col} = ? || (SELECT new FROM rekey_moves WHERE old = {t}.{col}) "
                        f"WHERE {col} IN (SELECT old FROM rekey_moves)", (prefix,)).rowcount
                    if swap:
                        self.conn.execute(f"UPDATE {t} SET {col} = substr({col}, ?) WHERE substr({col}, 1, ?) = ?",
                                          (len(prefix) + 1, len(prefix), prefix))
                # field names are identifiers (mapping.py): nothing to escape
                self.conn.executemany(f"UPDATE customers SET data = {self.dialect.json_set('data', key_field)} "
                                      "WHERE key = ?", [(_dumps(v), n) for _, n, v in moves])
                self.conn.execute("DELETE FROM sheet_state")
                self.conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                  "value = excluded.value", (KEY_FIELD_META, key_field))
        finally:
            self.conn.execute("DELETE FROM rekey_moves")
        return RekeyCounts(counts)

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
            k: StoredCustomer(k, r, json.loads(d), parse_iso(fs) or datetime.now(UTC), EmailStatus(es or "ok"),
                              bool(p))
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
        return StoredCustomer(k, r, json.loads(d), parse_iso(fs) or datetime.now(UTC), EmailStatus(es or "ok"),
                              bool(p))

    def apply_sync(self, source: str, changed: Sequence[Customer], unchanged: dict[str, int],
                   hashes: dict[str, str], now: datetime, *, complete: bool = True) -> SyncStats:
        """Record new customers and field changes; mark rows that disappeared.

        ``complete`` is False when the sheet could not be fully mapped (a
        required column missing): then nobody is marked removed. The
        activities a sync writes (``field_changed``, ``customer_added``,
        ``customer_removed``) carry the details records of
        :mod:`crm_automation.models`.
        """
        stats = SyncStats(unchanged=len(unchanged))
        ts = iso(now)
        with self.transaction():
            existing: dict[str, tuple[str, int]] = {
                k: (d, p) for k, d, p in self.conn.execute("SELECT key, data, present FROM customers")}
            acts: list[_SyncActivity] = []
            fresh: Sequence[Customer]
            if isinstance(changed, CustomerColumns) and not existing.keys() & set(changed.keys):
                fresh, changed = changed, []  # all new (a first sync): inserted column by column
            else:
                fresh = self._update_known(changed, existing, hashes, source, ts, stats, acts)
            if fresh:
                d = self.dialect
                before = self.conn.execute(f"SELECT coalesce(max({d.rowid}), 0) FROM customers").fetchone()[0]
                self._insert_customers(fresh, hashes, ts)
                # Their customer_added activities (``{"row"}``, CustomerAddedDetails), written by SQLite from the
                # rows just inserted: rowids only grow, and the rows went in sorted by key, so rowid order is
                # key order.
                self.conn.execute(
                    "INSERT INTO activities (customer_key, kind, occurred_at, source, details, logged_at) "
                    f"SELECT key, ?, ?, ?, {_ROW_DETAILS}, ? FROM customers WHERE {d.rowid} > ? "
                    f"ORDER BY {d.rowid}",
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
                                 _dumps(CustomerRemovedDetails().to_dict())))
                stats.removed = len(gone)
            acts.sort(key=lambda a: a[0])
            self.conn.executemany(
                "INSERT INTO activities (customer_key, kind, occurred_at, subject, body, source, details, logged_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(*a, ts) for a in acts])
        return stats

    def _update_known(self, changed: Sequence[Customer], existing: dict[str, tuple[str, int]],
                      hashes: dict[str, str], source: str, ts: str, stats: SyncStats,
                      acts: list[_SyncActivity]) -> list[Customer]:
        """Update the customers the log knows (their changes become activities); returns the new ones."""
        new: list[Customer] = []
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
                             _dumps(FieldChangedDetails(f, a, b, c.row).to_dict())))
                stats.changes.append((c.key, f, a, b))
            if not present:
                stats.returned += 1
                acts.append((c.key, Kind.CUSTOMER_ADDED.value, ts, None, None, source,
                             _dumps(CustomerAddedDetails(c.row, returned=True).to_dict())))
            if diffs:
                stats.changed += 1
            self.conn.execute(
                "UPDATE customers SET row = ?, data = ?, row_hash = ?, present = 1, removed_at = NULL"
                + (", last_changed = ?" if diffs else "") + " WHERE key = ?",
                (c.row, data_json, hashes.get(c.key), *((ts,) if diffs else ()), c.key))
        return new

    def _insert_customers(self, fresh: Sequence[Customer], hashes: dict[str, str], ts: str) -> None:
        """Insert new customers, SQLite building each ``data`` JSON with ``json_object``.

        Why: encoding 100,000 small dicts in Python was a fifth of a first
        sync (issue #3). Text, empty and 64-bit integer values are bound as
        they are; any other value (bool, float, a huge int) is bound as JSON
        text from Python's encoder through ``json(?)``, so what is read back
        is exactly what was validated.
        """
        # Key order keeps the primary-key B-tree appending instead of splitting pages.
        groups: list[tuple[tuple[str, ...], list[str], list[int], list[list[object]]]] = []
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
                # PostgreSQL: every value as JSON text (json_build_object cannot type a bare parameter)
                plain = self.dialect.name == "sqlite" and kinds <= _PLAIN and (int not in kinds or all(
                    -(2**63) <= v < 2**63 for v in col if type(v) is int))
                if not plain:
                    col[:] = [_dumps(v) for v in col]
                exprs.append("?" if plain else self.dialect.json_param)
            obj = ", ".join(f"'{n.replace(chr(39), chr(39) * 2)}', {e}" for n, e in zip(names, exprs, strict=True))
            at = "'" + ts.replace("'", "''") + "'"  # the same for every row: a literal, not 2 parameters a row
            self.conn.executemany(
                "INSERT INTO customers (key, row, data, row_hash, first_seen, last_changed, email_status, present) "
                f"VALUES (?, ?, {self.dialect.json_object(obj)}, ?, {at}, {at}, 'ok', 1)",
                zip(keys, rows, *columns, [hashes.get(k) for k in keys], strict=True))

    def sheet_state(self, source: str) -> SheetState | None:
        """What the last complete sync of ``source`` recorded, or None (never synced, or forgotten).

        The ``problems`` column holds a JSON list of problems, or an object
        with both lists (and ``rejected``, the rows they reject) when there
        are notes or a count.
        """
        row = self.conn.execute("SELECT fingerprint, rows, problems FROM sheet_state WHERE source = ?",
                                (source,)).fetchone()
        if row is None:
            return None
        saved = json.loads(row[2] or "[]")
        if isinstance(saved, dict):
            rejected = saved.get("rejected")
            return SheetState(row[0], row[1] or 0, tuple(saved.get("problems", [])), tuple(saved.get("notes", [])),
                              rejected if isinstance(rejected, int) else None)
        return SheetState(row[0], row[1] or 0, tuple(saved), ())

    def set_sheet_state(self, source: str, fingerprint: str | None, rows: int, problems: Sequence[str],
                        now: datetime, notes: Sequence[str] | None = None, rejected: int | None = None) -> None:
        """Remember the sheet's digest after a complete sync (None forgets it)."""
        with self.transaction():
            if fingerprint is None:
                self.conn.execute("DELETE FROM sheet_state WHERE source = ?", (source,))
                return
            saved: list[str] | dict[str, object] = list(problems)
            if notes or rejected is not None:
                saved = {"problems": list(problems), "notes": list(notes or ())}
                if rejected is not None:
                    saved["rejected"] = rejected
            self.conn.execute(
                "INSERT INTO sheet_state (source, fingerprint, synced_at, rows, problems) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(source) DO UPDATE SET fingerprint = excluded.fingerprint, "
                "synced_at = excluded.synced_at, rows = excluded.rows, problems = excluded.problems",
                (source, fingerprint, iso(now), rows, json.dumps(saved, ensure_ascii=False)))

    def set_email_status(self, key: str, status: EmailStatus) -> None:
        """``ok`` | ``bounced`` | ``unsubscribed`` (shown in the sheet's status column)."""
        with self.transaction():
            update_email_status(self.conn, key, status)

    def set_status_by_email(self, emails: Iterable[str], status: EmailStatus) -> int:
        """Set ``email_status`` of the customers whose key is one of ``emails`` (suppress add/remove)."""
        n = 0
        with self.transaction():
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
