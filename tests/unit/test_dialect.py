"""store/dialect.py (issue #20): one text per query, translated for PostgreSQL's driver at one point."""

from __future__ import annotations

import pytest

from crm_automation.store.dialect import POSTGRESQL, SQLITE, to_pyformat


@pytest.mark.parametrize(("written", "driver"), [
    ("SELECT 1 FROM t WHERE a = ? AND b = ?", "SELECT 1 FROM t WHERE a = %s AND b = %s"),
    ("INSERT INTO t VALUES (:campaign, :step_id, :x1)", "INSERT INTO t VALUES (%(campaign)s, %(step_id)s, %(x1)s)"),
    # a ? or :name inside a literal is text, not a parameter; a literal % is doubled for psycopg everywhere
    ("SELECT '?', ':x', 'a''?b' FROM t WHERE c = ?", "SELECT '?', ':x', 'a''?b' FROM t WHERE c = %s"),
    ("SELECT 1 FROM t WHERE k LIKE ? AND d NOT LIKE 'sqlite_%'", "SELECT 1 FROM t WHERE k LIKE %s AND d NOT LIKE "
                                                                 "'sqlite_%%'"),
    ("SELECT a % 2 FROM t", "SELECT a %% 2 FROM t"),
    # a cast is not a named parameter; a quoted identifier is copied
    ("SELECT (details::jsonb ->> 'field') FROM t WHERE x = :v", "SELECT (details::jsonb ->> 'field') FROM t WHERE "
                                                                "x = %(v)s"),
    ('SELECT "odd?name" FROM t', 'SELECT "odd?name" FROM t'),
    ("SELECT '09:00-18:00' WHERE t = ?", "SELECT '09:00-18:00' WHERE t = %s"),
    ("LIKE :p ESCAPE '\\'", "LIKE %(p)s ESCAPE '\\'"),
])
def test_placeholders_become_psycopgs(written: str, driver: str) -> None:
    assert POSTGRESQL.sql(written) == driver


def test_sqlite_gets_the_text_as_written() -> None:
    text = "UPDATE sends SET status = 'sending' WHERE id = ? AND message_id LIKE '%x'"
    assert SQLITE.sql(text) is text


def test_translation_is_done_once_per_text() -> None:
    text = "SELECT ? AS once_only_marker"
    before = to_pyformat.cache_info().misses
    for _ in range(3):
        POSTGRESQL.sql(text)
    assert to_pyformat.cache_info().misses == before + 1


def test_each_engines_spellings() -> None:
    assert SQLITE.begin == "BEGIN IMMEDIATE"  # SQLite: the write lock up front, so a busy log fails before any work
    assert POSTGRESQL.begin == "BEGIN"
    # SQLite's spelling kept to the letter: schema 9's expression index matches only it
    assert SQLITE.json_text("details", "field") == "json_extract(details, '$.field')"
    assert POSTGRESQL.json_text("details", "field") == "(details::jsonb ->> 'field')"
    assert SQLITE.no_index("status") == "+status"
    assert POSTGRESQL.no_index("status") == "status"


def test_a_claim_passes_locked_rows_on_postgresql_and_sqlites_write_lock_serialises_it() -> None:
    assert SQLITE.skip_locked == "" and SQLITE.rate_lock is None  # BEGIN IMMEDIATE: one writer at a time
    assert POSTGRESQL.skip_locked == " FOR UPDATE SKIP LOCKED"
    lock = POSTGRESQL.rate_lock
    assert lock is not None and "pg_advisory_xact_lock" in lock and "current_schema()" in lock  # per workspace
    assert POSTGRESQL.sql(lock).endswith("|| %s))")  # and per account, bound
