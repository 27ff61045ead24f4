"""``[workspace] database`` as a URL (issue #20, stage 1): refused clearly, a password never repeated.

PostgreSQL by URL is planned (issue #20) but not in this version. Before,
``database = "postgresql://..."`` was taken for a relative path: the first
run made a folder named ``postgresql:`` in the workspace and an empty SQLite
log in it, and went on mailing from that empty log. Now every command that
reads the config stops with exit 2, naming the key and the value, saying
what to use instead; a password in the URL is called out and shown as
``***``, never echoed.
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


@pytest.mark.parametrize("verb", ["check", "run"])
def test_a_postgresql_url_is_refused_as_not_available_yet(tmp_path, cli, verb):
    url = "postgresql://crm@db.example.com:5432/crm?sslmode=verify-full"
    cfg = _with_database(tmp_path, url)
    r = cli(verb, "--config", str(cfg), *(["--once"] if verb == "run" else []))
    said = r.out + r.err  # check reports on stdout, the other verbs on stderr
    assert r.code == 2
    assert "workspace.database" in said
    assert url in said
    assert "PostgreSQL is not available in this version" in said
    assert "Traceback" not in said
    # nothing was created from the URL taken as a path
    assert not (cfg.parent / "postgresql:").exists()


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
