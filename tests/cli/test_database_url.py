"""``[workspace] database`` as a URL (issue #20): a password in it refused and never repeated; other URLs refused.

Before, any URL was taken for a relative path: ``database =
"postgresql://..."`` made a folder named ``postgresql:`` in the workspace
and an empty SQLite log in it, and the worker went on mailing from that
empty log. A PostgreSQL URL is now the PostgreSQL backend
(tests/integration/test_workspace_backends.py); one with a password stops
every command with exit 2, naming the key, the value with its password as
``***``, and where a password goes instead; any other URL likewise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.core import make_workspace

SECRET = "Tr0ub4dor&3-not-for-logs"


def _with_database(tmp_path: Path, value: str) -> Path:
    cfg = make_workspace(tmp_path / "ws")
    text = cfg.read_text(encoding="utf-8").replace('database = "var/crm.sqlite"', f'database = "{value}"')
    cfg.write_text(text, encoding="utf-8")
    return cfg


@pytest.mark.parametrize("url", [
    f"postgresql://crm:{SECRET}@db.example.com/crm",
    f"postgres://db.example.com/crm?sslmode=require&password={SECRET}",
])
def test_a_password_in_the_url_is_refused_and_never_shown(tmp_path, cli, url):
    cfg = _with_database(tmp_path, url)
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert "a password in the database URL is refused" in r.out
    assert "***" in r.out
    assert SECRET not in r.err + r.out
    assert "Tr0ub4dor" not in r.err + r.out


def test_another_kind_of_url_is_refused_naming_what_is_expected(tmp_path, cli):
    cfg = _with_database(tmp_path, "mysql://crm@db.example.com/crm")
    r = cli("check", "--config", str(cfg))
    assert r.code == 2
    assert '"mysql://crm@db.example.com/crm", a URL of a kind crm-automation does not use' in r.out
    assert "SQLite file" in r.out


def test_a_path_stays_sqlite(tmp_path, cli):
    cfg = _with_database(tmp_path, "data/log.sqlite")
    r = cli("check", "--config", str(cfg))
    assert "URL" not in r.out + r.err
    assert r.code == 0, r.out
