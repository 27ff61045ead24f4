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
  both drivers' cursors are. This machine's
  SQLite is 3.40; Python's wheels and Debian 12 ship 3.40+ too.
- **One translation at one point**, :meth:`Dialect.sql`: the text as written
  (``?`` and ``:name`` placeholders, sqlite3's styles) becomes what the
  driver takes (psycopg's ``%s`` and ``%(name)s``, a literal ``%`` doubled),
  once per distinct text (cached), by a scanner that skips quoted literals
  and ``::`` casts. For SQLite it is the identity and the store's
  :class:`~crm_automation.store.connection.Guarded` never calls it, so the
  send loop's statements reach sqlite3 exactly as before.
- **The rest are named differences** (:class:`Dialect`'s fields): how a
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
loop's 5% budget spent on nothing the store needs (Core expressions cost
more again). The store's SQL is hand-tuned text (partial indexes matched by
literals, covering indexes, planner hints) that a toolkit would have to be
taught back; psycopg itself, the driver either way, costs ~280 us of client
CPU for the same statements on PostgreSQL.

Inventory of SQLite-specific constructs in ``store/`` and how each is
handled (stage 1 of issue #20 landed the portable rewrites and this module;
the PostgreSQL connection, its DDL and the contract suite over both
backends come next):

==================================  =========================================  =================================
construct (where)                   handling                                   status
==================================  =========================================  =================================
``INSERT OR IGNORE`` (activities,   ``ON CONFLICT DO NOTHING`` (portable)      done
sends, suppressions, tracking,
inbound, quarantine)
``UPDATE OR IGNORE`` (sends: step   ``NOT EXISTS`` on the unique key           done
ids, campaign rename)               (portable)
``MIN(a, b)`` scalar (sends)        ``CASE WHEN`` (portable)                   done
subquery in FROM without alias      alias added (portable)                     done
(contact)
``BEGIN IMMEDIATE`` (connection)    :attr:`Dialect.begin`                      done
``?`` / ``:name`` placeholders      :meth:`Dialect.sql` (cached)               done, PostgreSQL side unused yet
``SAVEPOINT`` / ``RELEASE``         same in both                               nothing to do
``cursor.lastrowid`` (activities,   ``RETURNING id`` (portable; measured the   done (psycopg has no
inbound, reports)                   same on the send loop)                     lastrowid)
``json_extract(x, '$.k')``          :meth:`Dialect.json_text`; SQLite's        next stage: the texts become
(activities, contact, digests,      spelling kept exactly (its expression      functions of the dialect
due, pipeline, schema indexes)      index matches only that spelling)
``json_each``, ``json_object``,     ``jsonb_array_elements_text``,             next stage
``json_set``, ``json()`` (due,      ``jsonb_build_object``, ``jsonb_set``
reports, customers, pipeline)
``rowid`` (customers, due: the      a ``seq`` identity column (a migration,    next stage
sheet's insertion order)            numbered 0012+)
``PRAGMA`` (connection set-up,      per-backend code in the connection;        next stage
migrations' ``user_version``,       the version is the ``_migrations`` count;
``table_info`` in rekey)            ``information_schema.columns``
``sqlite_master`` (rekey)           ``information_schema.tables``              next stage
``NOT INDEXED``, ``+status``        :meth:`Dialect.no_index` (SQLite's         next stage
planner hints (contact, pipeline,   planner hints; nothing on PostgreSQL)
sends)
``LIKE`` (reports' search: ASCII    ``ILIKE`` on PostgreSQL                    next stage
case-insensitive in SQLite)
``CREATE TEMP TABLE`` /             PostgreSQL's ``pg_temp``; or a VALUES      next stage
``temp.rekey_moves`` (rekey)        list
typed affinity: 0/1 for booleans,   INTEGER columns on PostgreSQL too; text    next stage
``EXISTS`` as 0/1, TEXT times       ISO times in a ``C``-collated database
                                    (byte order, as SQLite's BINARY)
``WITHOUT ROWID``, ``INTEGER        PostgreSQL DDL per migration (an identity  next stage
PRIMARY KEY`` ids, partial and      column; partial and expression indexes
expression indexes (schema)         exist there too)
schema 10's triggers, ``IS NOT``    PL/pgSQL trigger functions,                next stage
(schema)                            ``IS DISTINCT FROM``
sqlite-utils in migrations          the same named migrations with PostgreSQL  next stage
                                    DDL, recorded in ``_migrations`` alike
==================================  =========================================  =================================
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

    def no_index(self, column: str) -> str:
        """``column`` in a condition that must not pick an index (SQLite's unary ``+``; PostgreSQL plans alone)."""
        return f"+{column}" if self.name == "sqlite" else column


SQLITE = Dialect("sqlite", "BEGIN IMMEDIATE", _same)
POSTGRESQL = Dialect("postgresql", "BEGIN", to_pyformat)
