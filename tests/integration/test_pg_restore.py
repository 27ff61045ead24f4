"""A PostgreSQL log put back from an older ``pg_dump`` is refused, as an older SQLite copy is (issues #9, #20).

A restore brings the database's own marker back with it, so the database
alone cannot tell it is older; the copy of the marker each machine keeps
beside its config can. Real ``pg_dump`` and ``pg_restore`` from the
distribution's package, against the session's throwaway cluster.
"""

from __future__ import annotations

import csv
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.fixtures.core import make_workspace

pytestmark = pytest.mark.integration

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'


def _add_customers(cfg: Path, *numbers: int) -> None:
    with (cfg.parent / "customers.csv").open("a", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        for i in numbers:
            w.writerow([f"c{i}@example.com", f"Customer {i}", "lead", "owner@example.com"])


def _tool(postgres, name: str, *args: str) -> None:
    done = subprocess.run([str(postgres.pg_bin / name), *args], capture_output=True, text=True, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_database_put_back_from_an_older_dump_is_refused_and_nobody_is_mailed_again(tmp_path, cli, postgres):
    name = f"t_restore_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    try:
        cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
        cfg.write_text(cfg.read_text(encoding="utf-8").replace('database = "var/crm.sqlite"', f'database = "{url}"'),
                       encoding="utf-8")
        outbox = tmp_path / "ws" / "var" / "outbox"
        assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
        assert len(list(outbox.glob("*.eml"))) == 3
        dump = tmp_path / "older.dump"
        _tool(postgres, "pg_dump", "-Fc", "-f", str(dump), url)  # the nightly backup
        _add_customers(cfg, 3, 4)
        assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-28T10:00").code == 0
        assert len(list(outbox.glob("*.eml"))) == 5

        postgres.drop_database(name)  # the server is rebuilt from last night's backup
        postgres.create_database(name)
        _tool(postgres, "pg_restore", "--no-owner", "-d", url, str(dump))

        r = cli("run", "--once", "--config", str(cfg), "--now", "2026-11-29T10:00")
        assert r.code == 2, r.out + r.err
        assert "the activity log has 3 sent message(s), but this workspace recorded 5" in r.err
        assert len(list(outbox.glob("*.eml"))) == 5  # c3 and c4 were not mailed again
    finally:
        postgres.drop_database(name)

