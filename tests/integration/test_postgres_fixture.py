"""The throwaway PostgreSQL of tests/fixtures/postgres.py (issue #20): real, loopback-only, a fresh database per test.

The store's contract suite will run over this cluster; these tests pin what
it relies on: each test's database is new and empty whatever ran before
(the suite runs in random order), text sorts byte by byte as in SQLite, the
server listens on 127.0.0.1 only, and on CI a missing server fails.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.postgres import PgCluster, find_pg_bin, missing_postgres, require_postgres

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("round_", [1, 2])
def test_each_test_gets_an_empty_database_of_its_own(pg_database: str, round_: int) -> None:
    # Run twice: the second run would find the first one's table if databases were shared or reused.
    with psycopg.connect(pg_database, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        assert tables.fetchone() == (0,)
        conn.execute("CREATE TABLE left_behind (n integer)")
        conn.execute("INSERT INTO left_behind VALUES (%s)", (round_,))
        assert conn.execute("SELECT current_database()").fetchone()[0] == pg_database.rsplit("/", 1)[1]


def test_databases_are_dropped_after_their_test(postgres: PgCluster) -> None:
    name = "t_dropped_check"
    postgres.create_database(name)
    postgres.drop_database(name)
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone()
    assert left == (0,)


def test_text_sorts_byte_by_byte_as_in_sqlite(pg_database: str) -> None:
    # Keys and ISO 8601 times are compared as text by the store; a linguistic collation would sort
    # 'a' < 'B' and ignore punctuation, unlike SQLite's BINARY.
    with psycopg.connect(pg_database, autocommit=True) as conn:
        got = [r[0] for r in conn.execute("SELECT x FROM (VALUES ('b'), ('B'), ('a'), ('_z'), ('2026-01-02T00:00:00Z'), "
                                          "('2026-01-01T23:59:59Z')) v(x) ORDER BY x")]
    assert got == sorted(got)


def test_listens_on_loopback_only(postgres: PgCluster) -> None:
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)
    with socket.create_connection(("127.0.0.1", postgres.port), timeout=2):
        pass


def test_a_missing_server_fails_on_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No server binaries anywhere under an empty root and nothing on PATH:
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = missing_postgres(find_pg_bin(tmp_path), euid=os.geteuid())
    assert reason is not None
    assert "not installed" in reason
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required on CI"):
        require_postgres(reason)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_postgres(reason)
    require_postgres(None)  # a server present: neither
