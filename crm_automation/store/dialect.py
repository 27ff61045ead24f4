"""The log's SQL dialects in one place: SQLite (a file, the default) and PostgreSQL (a server, issue #20).

Issue #20: "No second copy of the store's SQL: one text per query, with the
few dialect differences in one place." This module is that place. The
mechanism, and why:

- **One portable text per query.** The store's statements are written in
  the SQL both engines accept: ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite
  3.24+) instead of ``INSERT OR IGNORE``, ``RETURNING`` (3.35+) where a new
  row's id is needed, ``CASE`` instead of SQLite's two-argument ``MIN``, an
  alias on every subquery in ``FROM`` (PostgreSQL before 16 requires one),
  a ``NOT EXISTS`` guard instead of ``UPDATE OR IGNORE``. What a statement
  returns is typed as :class:`~crm_automation.store.connection.Rows`, which
  both drivers' cursors are. This machine's SQLite is 3.40; Python's wheels
  and Debian 12 ship 3.40+ too.
- **One translation at one point**, :meth:`Dialect.sql`: the text as written
  (``?`` and ``:name`` placeholders, sqlite3's styles) becomes what the
  driver takes (psycopg's ``%s`` and ``%(name)s``, a literal ``%`` doubled),
  once per distinct text (cached), by a scanner that skips quoted literals
  and ``::`` casts. For SQLite it is the identity and the store's
  :class:`~crm_automation.store.connection.Guarded` never calls it, so the
  send loop's statements reach sqlite3 exactly as before.
- **The rest are named differences** (:class:`Dialect`'s members): how a
  write transaction starts (``BEGIN IMMEDIATE`` takes SQLite's write lock up
  front; PostgreSQL's row locks need a plain ``BEGIN``), and the few
  spellings no common form exists for, each rendered by a method.

Why not SQLAlchemy Core (issue #20: "measure before you choose"): the send
loop's statements (the ``sent`` record, its ``email_out`` activity, the
gate's read and the next ``sending`` mark, one commit) timed in CPU per
message by ``benchmarks/bench_store_sql.py``: bare sqlite3 ~83 us; through
this module (SQLite's identity, or the translation's cache lookup) the
same; ``RETURNING id`` instead of ``lastrowid`` the same; as SQLAlchemy 2.1
``text()`` on the same SQLite file ~210 us, 2.5x, ~125 us more a message:
4-6% of a whole message in ``bench_send`` (2.1-2.9 ms here), the send
loop's 5% budget spent on nothing the store needs (Core expressions, which
would have to be compiled, were not measured). The store's SQL is hand-tuned text (partial indexes matched by
literals, covering indexes, planner hints) that a toolkit would have to be
taught back; psycopg itself, the driver either way, costs ~280 us of client
CPU for the same statements on PostgreSQL.

Inventory of SQLite-specific constructs in ``store/`` and how each is
handled; the contract tests run the store's parts over both engines
(tests/fixtures/postgres.py ``log_location``):

==================================  =========================================
construct (where)                   handling
==================================  =========================================
``INSERT OR IGNORE`` (activities,   ``ON CONFLICT DO NOTHING`` (portable)
sends, suppressions, tracking,
inbound, quarantine)
``UPDATE OR IGNORE`` (sends: step   ``NOT EXISTS`` on the unique key (portable)
ids, campaign rename)
``MIN(a, b)`` scalar (sends)        ``CASE WHEN`` (portable)
subquery in FROM without alias      alias added (portable; PostgreSQL < 16
(contact, sends)                    requires one)
``cursor.lastrowid`` (activities,   ``RETURNING id`` (portable; measured the
inbound, reports)                   same on the send loop)
``temp.rekey_moves`` (rekey)        unqualified: both engines look in the
                                    temporary schema first
``json_object('row', row)`` (a      ``'{"row":' || row || '}'`` (portable,
customer_added's details)           the same text)
``BEGIN IMMEDIATE`` (connection)    :attr:`Dialect.begin`
one address's soft-bounce count     :attr:`Dialect.address_lock` (an
(inbound; SQLite: its write lock)   advisory transaction lock)
``?`` / ``:name`` placeholders      :meth:`Dialect.sql` (cached, PostgreSQL)
``SAVEPOINT`` / ``RELEASE``         the same in both
``json_extract(x, '$.k')``          :meth:`Dialect.json_text` (compared,
(activities, contact, digests,      indexed: SQLite's spelling kept to the
due, pipeline, schema)              letter), :meth:`Dialect.json_value` (read
                                    back typed), :meth:`Dialect.json_bool`
``json_each`` (due, contact,        :meth:`Dialect.json_array`,
pipeline, reports)                  :meth:`Dialect.json_values`
``json_object``/``json()`` (a new   :meth:`Dialect.json_object`,
customer's data), ``json_set``      :attr:`Dialect.json_param`,
(rekey)                             :meth:`Dialect.json_set`
``rowid`` (customers, due,         :attr:`Dialect.rowid` (PostgreSQL: the
contact: the sheet's order of       ``seq`` identity column, schema_pg.py)
arrival)
``sqlite_master`` + ``PRAGMA        :attr:`Dialect.tables_with_column`
table_info`` (rekey)                (``information_schema.columns``)
``NOT INDEXED``, ``+status``        :meth:`Dialect.scan`,
planner hints (contact, pipeline,   :meth:`Dialect.no_index` (nothing on
sends)                              PostgreSQL, which plans alone)
``LIKE`` (reports' search: ASCII    :attr:`Dialect.like` (``ILIKE``: every
case-insensitive in SQLite)         letter's case, not ASCII's only)
row locks for a claim (claims)      :attr:`Dialect.skip_locked` (``FOR UPDATE
                                    SKIP LOCKED``; SQLite: its write lock)
a lock on the rate's count          :attr:`Dialect.rate_lock` (an advisory
(claims)                            transaction lock; SQLite: its write lock)
a pipelined unit's transaction     :attr:`Dialect.pipeline_is_transaction`
(claims: the send loop's commit)    (PostgreSQL: the pipeline's implicit
                                    transaction, no ``BEGIN``/``COMMIT``;
                                    SQLite: ``BEGIN IMMEDIATE``/``COMMIT``)
``PRAGMA`` (connection set-up,      per engine in its connection module;
``user_version``)                   PostgreSQL's version is the count of
                                    ``_migrations``
typed affinity: 0/1 truth values,   BIGINT columns holding 0/1 on
text times, ``EXISTS`` as 0/1       PostgreSQL; ISO text times in a ``C``-
                                    collated database (byte order, as
                                    SQLite's BINARY); callers ``bool()`` it
DDL: sqlite-utils, ``WITHOUT        the same named migrations in
ROWID``, rowid ids, expression      PostgreSQL's DDL (``schema_pg.py``):
indexes, schema 10's triggers       identity ids, PL/pgSQL triggers,
with ``IS NOT``                     ``IS DISTINCT FROM``
==================================  =========================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass


def _same(sql: str) -> str:
    return sql


@functools.lru_cache(maxsize=4096)
def to_pyformat(sql: str) -> str:
    """sqlite3's placeholders (``?``, ``:name``) as psycopg's (``%s``, ``%(name)s``), a literal ``%`` as ``%%``.

    Quoted literals (``'...'``, with ``''`` inside) and identifiers
    (``"..."``) are copied as they are but for their ``%`` (psycopg reads a
    ``%`` anywhere in a statement that has parameters); ``::`` is a cast,
    not a name. Cached: the store's texts are constants, so each is
    scanned once per process.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # '' (or "") inside the literal
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i:end + 1].replace("%", "%%"))
            i = end + 1
        elif c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        elif c == ":" and i + 1 < n and sql[i + 1] == ":":
            out.append("::")
            i += 2
        elif c == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_"):
            end = i + 1
            while end < n and (sql[end].isalnum() or sql[end] == "_"):
                end += 1
            out.append(f"%({sql[i + 1:end]})s")
            i = end
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Dialect:
    """One engine's spelling of what the store's SQL cannot say the same way on both (see the module docstring)."""

    name: str  # "sqlite" | "postgresql": what ``check`` reports as the backend
    begin: str  # the statement opening a write transaction
    translate: Callable[[str], str]  # a statement as written in the store -> as the driver takes it
    # Whether the driver's pipeline block (Driver.pipeline) is by itself one transaction, so a pipelined unit
    # sends no BEGIN/COMMIT (issue #20). PostgreSQL: the statements between two Syncs of the extended protocol
    # run as one implicit transaction, committed at the Sync if all succeeded, rolled back otherwise
    # (PostgreSQL's docs, "Message Flow: Pipelining"). SQLite has no such thing: BEGIN IMMEDIATE ... COMMIT.
    pipeline_is_transaction: bool = False

    def sql(self, text: str) -> str:
        """``text`` as this engine's driver takes it (cached per text; SQLite: unchanged)."""
        return self.translate(text)

    def json_text(self, expr: str, key: str) -> str:
        """The text value of a top-level ``key`` of the JSON object in column ``expr``.

        SQLite's spelling is kept exactly (``json_extract(x, '$.k')``): its
        expression index (schema 9) is used only when a query spells it the same.
        """
        if self.name == "sqlite":
            return f"json_extract({expr}, '$.{key}')"
        return f"({expr}::jsonb ->> '{key}')"

    def json_bool(self, expr: str, key: str) -> str:
        """A JSON ``true``/``false`` of a top-level ``key`` as a condition (SQLite's 1/0; PostgreSQL's boolean)."""
        if self.name == "sqlite":
            return f"json_extract({expr}, '$.{key}')"
        return f"({expr}::jsonb ->> '{key}')::boolean"

    def json_value(self, expr: str, key: str) -> str:
        """The value of a top-level ``key`` of the JSON object in ``expr``, read back typed (a number as a number)."""
        if self.name == "sqlite":
            return f"json_extract({expr}, '$.{key}')"
        return f"({expr}::jsonb -> '{key}')"  # psycopg reads jsonb back as the Python value

    def json_value_at(self, expr: str) -> str:
        """As :meth:`json_value`, the key bound as the next parameter (``?``, the bare name)."""
        if self.name == "sqlite":
            return f"json_extract({expr}, '$.\"' || ? || '\"')"
        return f"({expr}::jsonb -> ?)"

    def json_array(self, expr: str, alias: str, key: str | None = None) -> str:
        """A FROM item: the elements of the JSON array ``expr`` (or its ``key``), one row each, as ``alias.value``."""
        if self.name == "sqlite":
            return f"json_each({expr}, '$.{key}') AS {alias}" if key else f"json_each({expr}) AS {alias}"
        arr = f"(({expr})::jsonb -> '{key}')" if key else f"({expr})::jsonb"
        return f"jsonb_array_elements_text({arr}) AS {alias}(value)"

    def json_values(self, expr: str, alias: str) -> str:
        """A FROM item: the values of the JSON object ``expr``, one row each, as ``alias.value``."""
        if self.name == "sqlite":
            return f"json_each({expr}) AS {alias}"
        return f"jsonb_each_text(({expr})::jsonb) AS {alias}"

    def json_object(self, pairs: str) -> str:
        """A JSON object's text from ``'name', value, ...`` (insertion order kept on both engines)."""
        return f"json_object({pairs})" if self.name == "sqlite" else f"json_build_object({pairs})::text"

    @property
    def json_param(self) -> str:
        """A parameter bound as JSON text that becomes a JSON value inside :meth:`json_object`."""
        return "json(?)" if self.name == "sqlite" else "CAST(? AS json)"

    @property
    def address_lock(self) -> str | None:
        """A statement holding the address bound as ``?`` for this workspace until the commit (None: no need).

        Issue #20: the soft-bounce score counts an address's bounces inside
        the transaction that logs a new one. Under PostgreSQL's READ COMMITTED
        two workers logging two bounces of one address at once would each
        count without the other's (not committed yet), and a limit both reach
        together would suppress nobody. With this transaction advisory lock
        (keyed by the schema, as the workspace lock) the second waits for the
        first's commit and then counts both. SQLite: its write lock serialises.
        """
        if self.name == "sqlite":
            return None
        return "SELECT pg_advisory_xact_lock(hashtext('crm-automation address ' || current_schema() || ' ' || ?))"

    def json_set(self, expr: str, key: str) -> str:
        """The JSON object ``expr`` with top-level ``key`` (an identifier) set to the JSON text bound as ``?``.

        PostgreSQL has ``jsonb_set`` only: the object comes back in jsonb's
        key order, which the store never relies on (it reads ``data`` as a dict).
        """
        if self.name == "sqlite":
            return f"json_set({expr}, '$.\"{key}\"', json(?))"
        return f"jsonb_set(({expr})::jsonb, '{{{key}}}', CAST(? AS jsonb))::text"

    @property
    def tables_with_column(self) -> str:
        """A query: the names of the log's tables that have the column bound as ``?``, sorted."""
        if self.name == "sqlite":
            return ("SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table' "
                    "AND m.name NOT LIKE 'sqlite%' AND p.name = ? ORDER BY m.name")
        return ("SELECT table_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND column_name = ? ORDER BY table_name")

    @property
    def schema_version_sql(self) -> str:
        """A query: the log's schema version (SQLite's header; PostgreSQL: the migrations recorded)."""
        return "PRAGMA user_version" if self.name == "sqlite" else "SELECT COUNT(*) FROM _migrations"

    @property
    def label(self) -> str:
        """The engine's name as ``check`` shows it."""
        return "SQLite" if self.name == "sqlite" else "PostgreSQL"

    @property
    def rowid(self) -> str:
        """The customers' insertion order: SQLite's ``rowid``; PostgreSQL's ``seq`` identity (schema_pg, v1)."""
        return "rowid" if self.name == "sqlite" else "seq"

    @property
    def like(self) -> str:
        """Case-insensitive LIKE: SQLite's LIKE folds ASCII case; PostgreSQL's ILIKE folds all."""
        return "LIKE" if self.name == "sqlite" else "ILIKE"

    def no_index(self, column: str) -> str:
        """``column`` in a condition that must not pick an index (SQLite's unary ``+``; PostgreSQL plans alone)."""
        return f"+{column}" if self.name == "sqlite" else column

    def scan(self, table: str) -> str:
        """``table`` read by one scan, no index (SQLite's ``NOT INDEXED``; PostgreSQL plans alone)."""
        return f"{table} NOT INDEXED" if self.name == "sqlite" else table

    @property
    def skip_locked(self) -> str:
        """Appended to a claim's inner SELECT: PostgreSQL locks the rows it picks and passes rows others lock.

        Issue #20: with ``FOR UPDATE SKIP LOCKED`` a second worker claiming
        at the same instant takes the next rows instead of waiting for the
        first's commit (and then finding them taken). SQLite has no row
        locks: its ``BEGIN IMMEDIATE`` serialises the claims (nothing added).
        """
        return "" if self.name == "sqlite" else " FOR UPDATE SKIP LOCKED"

    @property
    def rate_lock(self) -> str | None:
        """A statement taking the rate lock of this workspace and the account bound as ``?`` until the commit.

        PostgreSQL: a transaction advisory lock keyed by the schema (as the
        workspace lock, so workspaces sharing a database never wait on each
        other) and the account, so two workers cannot both count the last
        free slot of a limit (issue #20). SQLite: None, the write lock is it.
        """
        if self.name == "sqlite":
            return None
        return "SELECT pg_advisory_xact_lock(hashtext('crm-automation rate ' || current_schema() || ' ' || ?))"


SQLITE = Dialect("sqlite", "BEGIN IMMEDIATE", _same)
POSTGRESQL = Dialect("postgresql", "BEGIN", to_pyformat, pipeline_is_transaction=True)
