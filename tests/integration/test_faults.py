"""Fault injection for the worker (issue #9): each accident's exit code and message, nothing sent twice, nothing lost.

Real parts: a private Dovecot that is stopped mid-cycle, an aiosmtpd server
that drops the connection after DATA, a ``var/`` on a tmpfs remounted
read-only, a tmpfs filled to the last byte, and the log deleted between two
cycles. The tmpfs cases need ``mount`` (root, as on CI); elsewhere they skip,
and on CI a refused mount is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_automation.worker import Worker
from crm_automation.workspace import Workspace
from tests.fixtures.dovecot import make_message, require_dovecot, start_dovecot
from tests.integration.test_send_kill import cli, customers, sends, write_workspace

pytestmark = pytest.mark.integration


def _stages(out: str) -> dict[str, dict]:
    return {s["job"]: s for s in json.loads(out)["stages"]}


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` (created), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"mount -t tmpfs refused on CI: {r.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def test_imap_down_mid_cycle_sends_nothing_then_honours_the_waiting_unsubscribe(tmp_path, smtpd, monkeypatch):
    require_dovecot()
    directory = Path(tempfile.mkdtemp(prefix="crm-dovecot-faults-"))
    server = start_dovecot(directory)
    try:
        account = server.add_user()
        monkeypatch.setenv("TEST_IMAP_PASSWORD", account.password)
        cfg = write_workspace(tmp_path / "ws", smtpd, customers(4))

        def point_at(srv) -> None:
            text = cfg.read_text(encoding="utf-8")
            start = text.index("[mailbox]")
            end = text.index("[outbound]")
            cfg.write_text(text[:start] + (
                f'[mailbox]\nsource = "imap"\nhost = "{srv.host}"\nport = {srv.port}\nsecurity = "none"\n'
                f'username = "{account.user}"\npassword_env = "TEST_IMAP_PASSWORD"\n\n') + text[end:],
                encoding="utf-8")

        point_at(server)
        # c0001 has asked to be removed; the message waits in the mailbox.
        account.append([make_message(1, sender="c0001@example.net", subject="退订", body="退订")])
        w = Worker(Workspace.load(cfg))
        try:
            assert w.sync().ok
            server.stop()  # the IMAP server goes down between sync and fetch
            fetched, held = w.fetch_and_send()
        finally:
            w.close()
        assert fetched.exit_code() == 3 and held.exit_code() == 3
        assert "nothing was sent" in str(held.error)
        assert smtpd.messages == []
        assert sends(cfg) == []
        server = start_dovecot(directory)  # back, on a new port
        point_at(server)
        r = cli(cfg, "run", "--once", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        got = sorted(m.message.get("To") for m in smtpd.messages)
        assert len(got) == 3 and not any("c0001" in t for t in got)
        by = {s["customer_key"]: s["status"] for s in sends(cfg)}
        assert by["c0001@example.net"] == "skipped"
        # Once more: nothing new goes, nothing is logged twice.
        assert cli(cfg, "run", "--once").returncode == 0
        assert len(smtpd.messages) == 3
        con = sqlite3.connect(cfg.parent / "var" / "crm.sqlite")
        assert con.execute("SELECT COUNT(*) FROM activities WHERE kind = 'unsubscribe'").fetchone() == (1,)
        con.close()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_smtp_dropping_after_data_is_uncertain_and_never_resent(tmp_path, smtpd):
    cfg = write_workspace(tmp_path / "ws", smtpd, customers(5))
    smtpd.handler.drop_in_data = {2}  # the second message's connection dies after its content, before the reply
    r = cli(cfg, "run", "--once", "--json")
    assert r.returncode in (1, 3), r.stdout + r.stderr
    rows = sends(cfg)
    assert [s["status"] for s in rows].count("uncertain") == 1
    uncertain = next(s for s in rows if s["status"] == "uncertain")
    r2 = cli(cfg, "run", "--once", "--json")
    assert r2.returncode == 0, r2.stdout + r2.stderr  # nothing new happened; `report` lists the uncertain one
    after = {s["id"]: s["status"] for s in sends(cfg)}
    assert after[uncertain["id"]] == "uncertain"
    assert sorted(v for v in after.values()) == ["sent"] * 4 + ["uncertain"]
    ids = [m.message_id for m in smtpd.messages]
    assert len(ids) == len(set(ids)) == 4  # confirmed deliveries, none twice
    assert uncertain["message_id"] not in ids


def test_read_only_var_is_a_clear_error_exit_3(tmp_path, smtpd):
    cfg = write_workspace(tmp_path / "ws", smtpd, customers(3))
    var = tmp_path / "ws" / "var"
    with tmpfs(var, "8m"):
        assert cli(cfg, "run", "--once").returncode == 0
        assert len(smtpd.messages) == 3
        subprocess.run(["mount", "-o", "remount,ro", str(var)], check=True)
        for args in (("run", "--once", "--json"), ("sync", "--json"), ("report", "--json")):
            r = cli(cfg, *args)
            assert r.returncode == 3, (args, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr
            err = json.loads(r.stdout)
            assert err["ok"] is False and err["exit"] == 3
            assert str(var) in err["error"] and ("read-only" in err["error"].lower() or "Read-only" in err["error"])
            assert err["hint"]
        subprocess.run(["mount", "-o", "remount,rw", str(var)], check=True)
        r = cli(cfg, "run", "--once")
        assert r.returncode == 0, r.stderr
    assert len(smtpd.messages) == 3


def test_full_disk_stops_with_a_clear_error_and_loses_nothing(tmp_path, smtpd):
    cfg = write_workspace(tmp_path / "ws", smtpd, customers(3))
    var = tmp_path / "ws" / "var"
    inbox = tmp_path / "ws" / "inbox" / "new"
    with tmpfs(var, "4m"):
        assert cli(cfg, "run", "--once").returncode == 0
        assert len(smtpd.messages) == 3
        # Three customers write back, and the disk fills up to the last byte.
        for i in range(3):
            (inbox / f"{i}.reply").write_bytes(make_message(i, sender=f"c{i:04d}@example.net",
                                                            body="好的，请报价。" * 50))
        filler = var / "filler"
        with filler.open("wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        r = cli(cfg, "run", "--once", "--json")
        assert r.returncode == 3, r.stdout + r.stderr
        assert "Traceback" not in r.stderr
        text = r.stdout + r.stderr
        assert "disk is full" in text and str(var / "crm.sqlite") in text
        filler.unlink()
        r = cli(cfg, "run", "--once", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        con = sqlite3.connect(var / "crm.sqlite")
        try:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            rows = con.execute("SELECT message_id, COUNT(*) FROM activities WHERE kind = 'email_in' "
                               "GROUP BY message_id").fetchall()
        finally:
            con.close()
    assert len(rows) == 3 and all(n == 1 for _, n in rows)
    ids = [m.message_id for m in smtpd.messages]
    assert len(ids) == len(set(ids)) == 3


def test_injected_disk_full_at_the_stores_write_is_a_storage_error(tmp_path):
    """Where no tmpfs can be mounted, the same failure injected at the store's write (SQLite's own error)."""
    from crm_automation.errors import StorageError
    from crm_automation.store.repo import Store

    store = Store.open(tmp_path / "var" / "crm.sqlite")
    real = store.conn._c

    class Full:
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if sql.startswith(("INSERT", "UPDATE", "COMMIT")):
                e = sqlite3.OperationalError("database or disk is full")
                e.sqlite_errorcode = sqlite3.SQLITE_FULL
                raise e
            return real.execute(sql, *args)

    store.conn._c = Full()
    from datetime import UTC, datetime

    with pytest.raises(StorageError, match="the disk is full") as ei, store.transaction():
        store.suppress("a@example.com", "manual", "test", datetime.now(UTC))
    assert "free space" in ei.value.hint
    store.conn._c = real
    assert store.suppressions() == {}
    store.close()


def test_log_deleted_between_cycles_exit_2_and_nothing_sent_twice(tmp_path, smtpd):
    cfg = write_workspace(tmp_path / "ws", smtpd, customers(3))
    assert cli(cfg, "run", "--once").returncode == 0
    assert len(smtpd.messages) == 3
    for p in (tmp_path / "ws" / "var").glob("crm.sqlite*"):
        if not p.name.endswith(".lock"):
            p.unlink()
    r = cli(cfg, "run", "--once")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "not the activity log this workspace was using" in r.stderr and "--accept-new-log" in r.stderr
    assert "Traceback" not in r.stderr
    assert len(smtpd.messages) == 3
