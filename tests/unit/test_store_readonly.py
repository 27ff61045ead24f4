"""Issue #17: the log opened read-only (dry runs, ``check``) reads what a worker committed and cannot write."""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime

import pytest

from crm_automation.errors import StorageError
from crm_automation.store.repo import Store

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_readonly_log_sees_a_running_workers_commits_and_refuses_writes(tmp_path):
    db = tmp_path / "crm.sqlite"
    worker = Store.open(db)
    try:
        worker.start_run("sync", NOW)
        ro = Store.open_readonly(db)
        try:
            assert ro.log_id() == worker.log_id()
            assert ro.conn.execute("SELECT job FROM runs").fetchall() == [("sync",)]
            with pytest.raises(StorageError):
                ro.start_run("send-dry-run", NOW)
            with pytest.raises(StorageError):
                ro.campaign_first_seen(["new"], NOW)  # the recording path of planning
            assert ro.campaign_first_seen(["new"], NOW, record=False) == {"new": NOW}
        finally:
            ro.close()
    finally:
        worker.close()


def test_a_missing_log_reads_as_an_empty_one_and_is_not_created(tmp_path):
    db = tmp_path / "var" / "crm.sqlite"
    ro = Store.open_readonly(db)
    try:
        assert ro.sent_count() == 0 and ro.customers() == {}
        with pytest.raises(StorageError):
            ro.start_run("send-dry-run", NOW)
    finally:
        ro.close()
    assert not (tmp_path / "var").exists()


def test_an_older_log_is_upgraded_in_memory_and_left_as_it_is(tmp_path):
    db = tmp_path / "crm.sqlite"
    Store.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 1")  # as a log written before the last migration reads
    conn.close()
    before = digest(db)
    ro = Store.open_readonly(db)
    try:
        assert ro.sent_count() == 0
        with pytest.raises(StorageError):
            ro.start_run("send-dry-run", NOW)
    finally:
        ro.close()
    assert digest(db) == before
