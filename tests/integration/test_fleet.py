"""Several workers on one workspace (issue #20, stage 2): membership, liveness, stage locks, recovery, ``status``.

Against real parts: a real PostgreSQL cluster (tests/fixtures/postgres.py),
real ``crm-automation run`` processes where a kill matters, and the CLI
in-process elsewhere. What each test shows:

- two workers share a PostgreSQL workspace (no "another worker is running"),
  one gets ``sync`` and the other skips it with a note naming the holder;
- a SIGKILLed worker is found dead at once by its free session lock (the
  heartbeat timeout is an hour, so it cannot be why); a stale heartbeat
  makes a worker dead although its session lives; a worker taken for dead
  stops;
- recovery leaves a live worker's ``sending`` row alone: test_fleet_recovery.py;
- ``status`` and ``status --json`` on both engines;
- SQLite keeps its lock file: a second worker is refused.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crm_automation.app.access import WorkspaceLock
from crm_automation.app.status import WorkerState, fleet_status
from crm_automation.errors import LockedError
from crm_automation.fleet import reap
from crm_automation.store import postgres
from crm_automation.store.repo import Store
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
NOW = "2026-11-27T10:00"


def workspace_on(tmp_path: Path, database: str, *, timeout: str | None = None) -> Path:
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN)
    extra = f'\nheartbeat_timeout = "{timeout}"' if timeout else ""
    text = cfg.read_text(encoding="utf-8").replace('database = "var/crm.sqlite"', f'database = "{database}"{extra}')
    cfg.write_text(text, encoding="utf-8")
    return cfg


def open_log(cfg: Path) -> Store:
    return Workspace.load(cfg).open_store()


def wait_until(what: str, cond: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def database(log_location: str) -> str:
    return database_value(log_location)


# ---------------------------------------------------------------- stage locks


def test_two_workers_share_a_postgresql_workspace_and_one_skips_sync_naming_the_holder(tmp_path, cli, pg_log):
    cfg = workspace_on(tmp_path, pg_log)
    ws = Workspace.load(cfg)
    with WorkspaceLock(ws) as first, first.fleet.exclusive("sync") as holder:
        assert holder is None  # the first worker has sync
        r = cli("sync", "--json", "--config", str(cfg))  # a second worker: it runs, and skips sync
        assert r.code == 0, r.err
        stage = json.loads(r.out)["stages"][0]
        assert stage["job"] == "sync" and stage["ok"] is True
        assert stage["notes"] == [f"sync: skipped this cycle, held by worker {first.fleet.worker_id}"]
        store = open_log(cfg)
        try:
            assert store.customers() == {}  # nothing was read by the worker that skipped
            workers = {w.id: w for w in store.workers(stopped_since=datetime.now(UTC) - timedelta(hours=1))}
            assert len(workers) == 2 and workers[first.fleet.worker_id].stopped_at is None  # both registered
            [(stats,)] = store.conn.execute("SELECT stats FROM runs WHERE job = 'sync'").fetchall()
            assert json.loads(stats)["note"] == f"skipped: held by worker {first.fleet.worker_id}"  # runs says so
        finally:
            store.close()
    r = cli("sync", "--config", str(cfg))  # the stage is free again: this one syncs
    assert r.code == 0, r.err
    assert "skipped" not in r.err
    store = open_log(cfg)
    try:
        assert sorted(store.customers()) == [f"c{i}@example.com" for i in range(3)]
    finally:
        store.close()
    assert not (tmp_path / "ws" / "var" / "crm.sqlite").exists()  # no SQLite file, no lock file from the URL


def test_a_stage_lock_is_per_name_and_let_go_after_the_block(tmp_path, pg_log):
    ws = Workspace.load(workspace_on(tmp_path, pg_log))
    with WorkspaceLock(ws) as a, WorkspaceLock(ws) as b:
        with a.fleet.exclusive("fetch inbox INBOX") as got_a, b.fleet.exclusive("fetch inbox INBOX") as got_b, \
                b.fleet.exclusive("fetch inbox Junk") as other:
            assert got_a is None and other is None
            assert got_b == f"held by worker {a.fleet.worker_id}"
        with b.fleet.exclusive("fetch inbox INBOX") as again:
            assert again is None


def test_a_send_pass_whose_send_plan_another_worker_holds_is_skipped_naming_it(tmp_path, cli, pg_log):
    cfg = workspace_on(tmp_path, pg_log)
    assert cli("sync", "--config", str(cfg), "--now", NOW).code == 0
    outbox = tmp_path / "ws" / "var" / "outbox"
    with WorkspaceLock(Workspace.load(cfg)) as first, first.fleet.exclusive("send-plan") as holder:
        assert holder is None
        r = cli("send", "--json", "--config", str(cfg), "--now", NOW)
        assert r.code == 0, r.err
        fetched, stage = json.loads(r.out)["stages"]  # `send` fetches first (issue #9)
        assert fetched["job"] == "fetch" and fetched["ok"] is True
        assert stage["job"] == "send" and stage["stats"]["sent"] == 0
        assert stage["notes"] == [f"send-plan: skipped this cycle, held by worker {first.fleet.worker_id}"]
        assert not list(outbox.glob("*.eml"))  # nothing planned, queued or sent by the worker that skipped
    r = cli("send", "--json", "--config", str(cfg), "--now", NOW)
    assert r.code == 0, r.err
    assert len(list(outbox.glob("*.eml"))) == 3


def test_a_worker_whose_send_plan_another_holds_hands_over_what_is_queued(tmp_path, cli, pg_log):
    """Claims make dispatch safe in every worker: only the planning waits for the holder of ``send-plan``."""
    cfg = workspace_on(tmp_path, pg_log)
    assert cli("sync", "--config", str(cfg), "--now", NOW).code == 0
    outbox = tmp_path / "ws" / "var" / "outbox"
    r = cli("send", "--limit", "1", "--config", str(cfg), "--now", NOW)  # plans and queues 3, hands 1 over
    assert r.code == 0, r.err
    assert len(list(outbox.glob("*.eml"))) == 1
    with WorkspaceLock(Workspace.load(cfg)) as first, first.fleet.exclusive("send-plan") as holder:
        assert holder is None
        r = cli("send", "--json", "--config", str(cfg), "--now", NOW)
        assert r.code == 0, r.err
        stage = json.loads(r.out)["stages"][-1]
        assert stage["job"] == "send" and stage["stats"]["sent"] == 2
        assert stage["notes"] == [f"send-plan: skipped this cycle, held by worker {first.fleet.worker_id}"]
    mails = list(outbox.glob("*.eml"))
    assert len(mails) == 3
    store = open_log(cfg)
    try:
        sent = [s for s in store.sends() if s.status.value == "sent"]
    finally:
        store.close()
    assert len(sent) == 3 and len({s.customer_key for s in sent}) == 3


def test_a_mailbox_folder_another_worker_fetches_is_skipped_and_the_others_read(tmp_path, cli, pg_log):
    cfg = workspace_on(tmp_path, pg_log)
    (tmp_path / "ws" / "inbox" / "new" / "1.a").write_bytes(
        b"From: Someone <someone@example.org>\r\nTo: sales@example.com\r\nSubject: Hi\r\n"
        b"Message-ID: <hi-1@example.org>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0800\r\n\r\nHello.\r\n")
    ws = Workspace.load(cfg)
    source = ws.open_mailbox()
    [folder] = source.folders()
    with WorkspaceLock(ws) as first, first.fleet.exclusive(f"fetch {source.name} {folder}") as holder:
        assert holder is None
        r = cli("fetch", "--json", "--config", str(cfg))
        assert r.code == 0, r.err
        [stage] = json.loads(r.out)["stages"]
        assert stage["notes"] == [f"fetch {folder}: skipped this cycle, held by worker {first.fleet.worker_id}"]
        assert stage["stats"].get("messages", 0) == 0
        assert (tmp_path / "ws" / "inbox" / "new" / "1.a").exists()  # left for the worker that holds the folder
    r = cli("fetch", "--json", "--config", str(cfg))
    assert r.code == 0, r.err
    assert json.loads(r.out)["stages"][0]["stats"]["messages"] == 1


def test_write_back_another_worker_holds_is_skipped_naming_it(tmp_path, cli, pg_log):
    cfg = workspace_on(tmp_path, pg_log)
    with WorkspaceLock(Workspace.load(cfg)) as first, first.fleet.exclusive("writeback"):
        r = cli("run", "--once", "--json", "--config", str(cfg), "--now", NOW)
        assert r.code == 0, r.err
        stages = {s["job"]: s for s in json.loads(r.out)["stages"]}
        assert stages["writeback"]["notes"] == [
            f"writeback: skipped this cycle, held by worker {first.fleet.worker_id}"]
        assert stages["sync"].get("notes") is None and stages["send"]["stats"]["sent"] == 3  # the rest ran


def test_a_second_worker_on_sqlite_is_still_refused_by_the_lock_file(tmp_path, cli):
    cfg = workspace_on(tmp_path, "var/crm.sqlite")
    with WorkspaceLock(Workspace.load(cfg)):
        r = cli("sync", "--config", str(cfg))
        assert r.code == 2
        assert "another crm-automation worker is running on this workspace" in r.err
        with pytest.raises(LockedError):
            WorkspaceLock(Workspace.load(cfg)).__enter__()


def test_on_sqlite_an_earlier_process_still_running_in_the_log_is_marked_stopped_when_a_worker_joins(tmp_path):
    cfg = workspace_on(tmp_path, "var/crm.sqlite")
    store = open_log(cfg)
    now = datetime.now(UTC)
    store.register_worker("host/1/killed", "host", 1, now)  # a killed process: its row says running
    store.close()
    with WorkspaceLock(Workspace.load(cfg)) as lock:
        store = open_log(cfg)
        try:
            rows = {w.id: w for w in store.workers(stopped_since=now - timedelta(minutes=1))}
        finally:
            store.close()
        assert rows["host/1/killed"].stopped_at is not None  # the lock file says it cannot be running
        assert rows[lock.fleet.worker_id].stopped_at is None


# ---------------------------------------------------------------- liveness


class RunProcess:
    """``crm-automation run`` (the scheduled worker) in a subprocess."""

    def __init__(self, cfg: Path, name: str) -> None:
        self.log_path = cfg.parent / f"{name}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("CRM_AUTOMATION_CONFIG", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "crm_automation", "run", "--config", str(cfg)],
                                     env=env, cwd=cfg.parent, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def run_process() -> Iterator[Callable[[Path, str], RunProcess]]:
    started: list[RunProcess] = []

    def start(cfg: Path, name: str) -> RunProcess:
        started.append(RunProcess(cfg, name))
        return started[-1]

    yield start
    for p in started:
        p.close()


def _running(cfg: Path) -> dict[int, str]:
    """pid -> id of the workers not marked stopped."""
    store = open_log(cfg)
    try:
        return {w.pid: w.id for w in store.workers()}
    finally:
        store.close()


def test_two_worker_processes_run_side_by_side_and_a_sigkilled_one_is_found_dead_at_once(tmp_path, pg_log,
                                                                                          run_process):
    cfg = workspace_on(tmp_path, pg_log, timeout="1h")  # a heartbeat cannot be why: only the free lock
    first, second = run_process(cfg, "first"), run_process(cfg, "second")
    wait_until("both workers registered", lambda: set(_running(cfg)) >= {first.proc.pid, second.proc.pid},
               timeout=120)
    time.sleep(1)  # both past their first cycle's start: neither was turned away
    assert first.proc.poll() is None and second.proc.poll() is None, first.output() + second.output()
    ids = _running(cfg)
    store = open_log(cfg)
    try:
        assert store.unlocked_workers(ids.values()) == set()  # both sessions hold their locks
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        # At once, not after heartbeat_timeout: the server ends the session as soon as it reads the closed socket.
        wait_until("the killed worker's lock to be free",
                   lambda: store.unlocked_workers(ids.values()) == {ids[first.proc.pid]}, timeout=5)
        states = {w.row.pid: w.state for w in fleet_status(Workspace.load(cfg)).workers}  # what `status` shows
        assert states == {first.proc.pid: WorkerState.DEAD, second.proc.pid: WorkerState.ALIVE}
        assert reap(store, datetime.now(UTC), timedelta(hours=1), me="test") == [ids[first.proc.pid]]
        assert [w.pid for w in store.workers()] == [second.proc.pid]  # the only one not marked stopped
    finally:
        store.close()
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=60) == 0, second.output()
    assert "another crm-automation worker" not in first.output() + second.output()
    assert _running(cfg) == {}  # stopped cleanly: its row says so


def test_a_stale_heartbeat_makes_a_worker_dead_though_its_session_lives(pg_log):
    store = Store.open(pg_log)
    now = datetime.now(UTC)
    sessions = [postgres.Member(pg_log, None, wid) for wid in ("far/1/a", "near/2/b")]
    try:
        for m in sessions:
            m.join()  # both sessions hold their worker locks: the lock says alive
        store.register_worker("far/1/a", "far", 1, now - timedelta(seconds=61))  # a machine that vanished
        store.register_worker("near/2/b", "near", 2, now - timedelta(seconds=30))
        assert reap(store, now, timedelta(seconds=60), me="me/3/c") == ["far/1/a"]
        assert [w.id for w in store.workers()] == ["near/2/b"]
        assert store.unlocked_workers(["far/1/a", "near/2/b"]) == set()  # not for its lock: its heartbeat
    finally:
        for m in sessions:
            m.leave()
        store.close()


def test_a_worker_taken_for_dead_stops(tmp_path, database):
    cfg = workspace_on(tmp_path, database, timeout="3s")  # a heartbeat every second
    with WorkspaceLock(Workspace.load(cfg)) as lock:
        store = open_log(cfg)
        try:
            store.stop_workers([lock.fleet.worker_id], datetime.now(UTC))  # another worker's verdict
        finally:
            store.close()
        wait_until("the worker's stop flag", lock.fleet.stop.is_set, timeout=10)


def test_the_heartbeat_records_the_stage_and_keeps_the_worker_alive(tmp_path, database):
    cfg = workspace_on(tmp_path, database, timeout="3s")
    with WorkspaceLock(Workspace.load(cfg)) as lock:
        lock.fleet.doing("fetch")
        store = open_log(cfg)
        try:
            first = store.workers()[0].heartbeat_at
            wait_until("two heartbeats", lambda: store.workers()[0].heartbeat_at >= first + timedelta(seconds=2),
                       timeout=10)
            assert store.workers()[0].stage == "fetch"
        finally:
            store.close()
        time.sleep(1.5)  # past half the timeout: still alive, its beats keep it so
        store = open_log(cfg)
        try:
            assert reap(store, datetime.now(UTC), timedelta(seconds=3), me="test") == []
        finally:
            store.close()
        assert [w.state for w in fleet_status(Workspace.load(cfg)).workers] == [WorkerState.ALIVE]
        assert not lock.fleet.stop.is_set()


# ---------------------------------------------------------------- status


def test_status_lists_the_workers_alive_and_stopped_human_and_json(tmp_path, cli, database):
    cfg = workspace_on(tmp_path, database)
    assert cli("run", "--once", "--config", str(cfg), "--now", NOW).code == 0  # a worker that came and went
    with WorkspaceLock(Workspace.load(cfg)) as lock:
        me = lock.fleet.worker_id
        store = open_log(cfg)
        try:
            store.conn.execute("BEGIN")
            store.conn.execute("UPDATE sends SET status = 'queued', holder = ? WHERE customer_key = 'c0@example.com'",
                               (me,))
            store.conn.execute("COMMIT")
            assert store.beat(me, datetime.now(UTC), "send")
        finally:
            store.close()
        r = cli("status", "--json", "--config", str(cfg))
        assert r.code == 0, r.err
        data = json.loads(r.out)
        assert data["engine"] == ("PostgreSQL" if database.startswith("postgresql://") else "SQLite")
        assert data["alive"] == 1 and data["heartbeat_timeout_seconds"] == 60
        live = {w["id"]: w for w in data["workers"]}[me]
        assert live["state"] == "alive" and live["host"] == socket.gethostname() and live["pid"] == os.getpid()
        assert live["stage"] == "send" and live["claimed_sends"] == 1 and live["stopped"] is None
        assert live["started"].endswith("Z") and live["heartbeat"].endswith("Z")
        [gone] = [w for w in data["workers"] if w["id"] != me]
        assert gone["state"] == "stopped" and gone["stopped"] is not None and gone["claimed_sends"] == 0
        r = cli("status", "--config", str(cfg))
        assert r.code == 0, r.err
        lines = r.out.splitlines()
        assert lines[0].startswith("1 worker(s) alive, 1 stopped or dead in the last 24 h")
        assert lines[1].startswith(f"alive    {socket.gethostname()} pid {os.getpid()}")
        assert "stage send" in lines[1] and "claimed sends 1" in lines[1] and lines[1].endswith(f"[{me}]")
        assert lines[2].startswith("stopped ") and " stopped 20" in lines[2]
    data = json.loads(cli("status", "--json", "--config", str(cfg)).out)
    assert data["alive"] == 0 and {w["state"] for w in data["workers"]} == {"stopped"}


def test_status_before_any_worker_ran_says_none_and_creates_nothing(tmp_path, cli):
    cfg = workspace_on(tmp_path, "var/crm.sqlite")
    r = cli("status", "--config", str(cfg))
    assert r.code == 0, r.err
    assert r.out.startswith("0 worker(s) alive, 0 stopped or dead")
    assert not (tmp_path / "ws" / "var" / "crm.sqlite").exists()


def test_status_shows_the_latest_stopped_workers_only(tmp_path, cli):
    cfg = workspace_on(tmp_path, "var/crm.sqlite")
    store = open_log(cfg)
    now = datetime.now(UTC)
    try:
        for i in range(25):  # e.g. `crm-automation send` from cron: one stopped worker a run
            store.register_worker(f"h/{i}/x", "h", i, now - timedelta(minutes=60 - i))
            store.stop_workers([f"h/{i}/x"], now - timedelta(minutes=59 - i))
    finally:
        store.close()
    data = json.loads(cli("status", "--json", "--config", str(cfg)).out)
    assert [w["pid"] for w in data["workers"]] == list(range(5, 25))  # the latest 20, by start
