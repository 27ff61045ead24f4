"""The PostgreSQL server goes away in the middle of a send pass, then comes back (issue #20).

A server stopped under a running ``send`` (an upgrade, a restart, a crash)
must cost nothing but time: the worker stops with exit 3 and a message
naming the server (no traceback, no half-written state), and the next pass
after the server is back sends every customer exactly once, the one
message whose fate the log could not record reported ``uncertain``, never
sent again.

The test starts a cluster of its own (the session's is shared by every other
test and must not be stopped).
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.fixtures.postgres import PgCluster, start_server, stop_server, throwaway_cluster
from tests.integration.test_send_kill import _env, cli, cli_args, customers, sends, write_workspace

pytestmark = pytest.mark.integration


@pytest.fixture
def own_cluster() -> Iterator[PgCluster]:
    """A cluster of this test's own, which it may stop and start."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])  # a restart; a crash (the server replays its WAL)
def test_the_server_stopped_mid_pass_then_started_loses_and_doubles_nothing(tmp_path, smtpd, own_cluster, mode):
    n = 150
    rows = customers(n)
    url = own_cluster.create_database("crm")
    cfg = write_workspace(tmp_path, smtpd, rows, database=url)
    r = cli(cfg, "sync")
    assert r.returncode == 0, r.stderr
    smtpd.handler.data_delay = 0.02  # a real server's latency: the pass is well under way when the server stops

    proc = subprocess.Popen(cli_args(cfg, "send"), env=_env(), cwd=cfg.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    smtpd.handler.wait_for_count(30, timeout=60)
    stop_server(own_cluster, mode)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, (out, err)
    assert "PostgreSQL server did not answer" in err, err
    assert "Traceback" not in err, err
    assert "crm@127.0.0.1" in err  # the server is named (the URL, which holds no password)
    received_while_down = len(smtpd.messages)
    assert 30 <= received_while_down < n, received_while_down
    time.sleep(0.3)
    assert len(smtpd.messages) == received_while_down  # the worker stopped handing over when the log went away

    start_server(own_cluster)
    final = cli(cfg, "send")
    assert final.returncode in (0, 1), final.stderr
    before_rerun = len(smtpd.messages)
    again = cli(cfg, "send")
    assert again.returncode in (0, 1), again.stderr
    assert len(smtpd.messages) == before_rerun, "a pass after the recovery sent more"

    got = Counter(m.message_id for m in smtpd.messages)
    assert all(c == 1 for c in got.values()), {mid: c for mid, c in got.items() if c > 1}
    table = [s for s in sends(cfg, url) if s["campaign"] == "promo"]
    assert Counter(s["customer_key"] for s in table) == Counter(r["email"] for r in rows)
    statuses = Counter(s["status"] for s in table)
    assert set(statuses) <= {"sent", "uncertain"}, statuses
    assert statuses["uncertain"] <= 1, statuses  # at most the one message in flight when the server stopped
    for s in table:
        if s["status"] == "sent":
            assert got[s["message_id"]] == 1, s
    # Everything received is a row of the log; an uncertain one may or may not have reached the server.
    assert set(got) <= {s["message_id"] for s in table}
    assert statuses["sent"] <= len(got) <= statuses["sent"] + statuses["uncertain"]


@pytest.mark.slow
def test_a_scheduled_worker_outlives_the_servers_restart_and_finishes_the_campaign(tmp_path, smtpd, own_cluster):
    """``run`` keeps its schedule: the pass the server's stop cut short is tried again once the server is back."""
    n = 120
    rows = customers(n)
    url = own_cluster.create_database("crm")
    cfg = write_workspace(tmp_path, smtpd, rows, database=url)
    cfg.write_text(cfg.read_text(encoding="utf-8") + '\n[schedule]\nsync_every = "2s"\nfetch_every = "2s"\n'
                   'send_every = "2s"\n', encoding="utf-8")
    smtpd.handler.data_delay = 0.02
    proc = subprocess.Popen(cli_args(cfg, "run"), env=_env(), cwd=cfg.parent, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        smtpd.handler.wait_for_count(20, timeout=60)
        stop_server(own_cluster)
        time.sleep(3)  # at least one scheduled pass finds no server
        assert proc.poll() is None, proc.communicate()
        start_server(own_cluster)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(smtpd.messages) < n - 1:
            time.sleep(0.2)
        time.sleep(2.5)  # one more pass: nothing more may go
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert "PostgreSQL server did not answer" in err, err
    got = Counter(m.message_id for m in smtpd.messages)
    assert all(c == 1 for c in got.values()), {mid: c for mid, c in got.items() if c > 1}
    table = [s for s in sends(cfg, url) if s["campaign"] == "promo"]
    statuses = Counter(s["status"] for s in table)
    assert statuses["sent"] + statuses["uncertain"] == n, statuses
    assert statuses["uncertain"] <= 1, statuses
