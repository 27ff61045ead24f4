"""``GET /healthz`` (issue #19 item 9): 200 while every scheduled stage ran within twice its interval, else 503."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from crm_automation.workspace import Clock
from tests.fixtures.core import make_workspace

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)  # 10:00 Asia/Shanghai, when `run --once` ran


def _ran(tmp_path, cli, schedule=""):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, extra_config=schedule)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-27T10:00").code == 0
    return cfg


def test_healthy_within_twice_each_interval(tmp_path, cli, web_server):
    cfg = _ran(tmp_path, cli)  # defaults: sync 5m, fetch 2m, send 10m
    srv = web_server(cfg, Clock(T0 + timedelta(minutes=3)))
    r = httpx.get(f"{srv.url}/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    assert {k: (v["every_seconds"], v["late"], v["last_ok"]) for k, v in body["stages"].items()} == {
        "sync": (300, False, True), "fetch": (120, False, True), "send": (600, False, True)}
    assert body["stages"]["send"]["last_started_at"].startswith("2026-11-27T02:00")
    assert body["queue"]["queued"] == 0 and body["quarantined"] == 0
    assert "@" not in r.text  # no customer data
    assert "set-cookie" not in r.headers


def test_a_stage_late_beyond_twice_its_interval_is_503(tmp_path, cli, web_server):
    cfg = _ran(tmp_path, cli)
    srv = web_server(cfg, Clock(T0 + timedelta(minutes=5)))  # fetch: every 2m, last 5m ago
    r = httpx.get(f"{srv.url}/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["ok"] is False
    assert [k for k, v in body["stages"].items() if v["late"]] == ["fetch"]


def test_fetch_counts_as_running_at_each_send_pass(tmp_path, cli, web_server):
    cfg = _ran(tmp_path, cli, '\n[schedule]\nfetch_every = "1h"\nsend_every = "10m"\nsync_every = "1h"\n')
    r = httpx.get(f"{web_server(cfg, Clock(T0 + timedelta(minutes=25))).url}/healthz")
    assert r.status_code == 503 and r.json()["stages"]["fetch"]["every_seconds"] == 600


def test_a_worker_that_never_ran_is_503(tmp_path, web_server):
    cfg = make_workspace(tmp_path / "ws")
    r = httpx.get(f"{web_server(cfg).url}/healthz")
    assert r.status_code == 503
    assert all(v["late"] and v["last_started_at"] is None for v in r.json()["stages"].values())
