"""Queueing a broadcast a chunk of sends per transaction (issue #19: short worker write transactions).

The worker holds the log's write lock while it queues; one transaction for a whole broadcast kept every
one-click unsubscribe of ``serve`` waiting (~0.9 s at 100,000 customers). These tests check the chunks leave
exactly the rows one transaction left, and that a worker killed between two chunks sends each message once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from crm_automation.send import plan
from tests.integration.test_send_kill import _env, customers, sends, write_workspace
from tests.integration.test_send_kill import cli as run_cli

pytestmark = pytest.mark.integration

ROW_FIELDS = ("campaign", "step", "step_id", "customer_key", "status", "error", "email")


def _rows(cfg) -> list[tuple[object, ...]]:
    return [tuple(s[f] for f in ROW_FIELDS) for s in sends(cfg)]


def test_chunked_queueing_leaves_the_same_rows_in_the_same_order(tmp_path, smtpd, cli, monkeypatch):
    rows = customers(23)
    rows[4]["email"] = "not-an-address"  # a row the sheet rejects: nothing queued for it
    got = {}
    for name, chunk in (("whole", 10_000), ("chunks", 5)):
        cfg = write_workspace(tmp_path / name, smtpd, rows)
        assert run_cli(cfg, "sync").returncode == 1  # the rejected row
        # one customer already suppressed: its send is written as `skipped` among the queued ones
        assert run_cli(cfg, "suppress", "add", rows[7]["email"]).returncode == 0
        monkeypatch.setattr(plan, "QUEUE_CHUNK", chunk)
        r = cli("--config", str(cfg), "send")  # in this process: with this chunk
        assert r.code == 0, r.err
        got[name] = _rows(cfg)
    assert got["whole"] == got["chunks"]
    assert Counter(r[4] for r in got["chunks"]) == {"sent": 21, "skipped": 1}


KILL_AFTER_FIRST_CHUNK = textwrap.dedent("""
    import os, sys
    from crm_automation.cli import main
    from crm_automation.send import plan
    from crm_automation.store.repo import Store

    plan.QUEUE_CHUNK = 10
    queue_sends = Store.queue_sends

    def queue_then_die(self, rows):
        n = queue_sends(self, rows)   # this chunk is committed ...
        os._exit(137)                 # ... and the worker dies before the next one, as a SIGKILL leaves it

    Store.queue_sends = queue_then_die
    main(["--config", sys.argv[1], "send"])
""")


def test_a_worker_killed_between_two_chunks_sends_each_message_once(tmp_path, smtpd):
    rows = customers(35)
    cfg = write_workspace(tmp_path, smtpd, rows)
    assert run_cli(cfg, "sync").returncode == 0
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_CHUNK, str(cfg)], env=_env(), cwd=cfg.parent,
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == 137, killed.stderr
    before = sends(cfg)
    assert len(before) == 10 and {s["status"] for s in before} == {"queued"}  # the first chunk only
    assert not smtpd.messages  # nothing handed over: dispatch starts after the last chunk
    queued_ids = {s["customer_key"]: s["message_id"] for s in before}

    r = run_cli(cfg, "send")
    assert r.returncode == 0, r.stdout + r.stderr
    again = run_cli(cfg, "send")  # and a second pass finds nothing to do
    assert again.returncode == 0, again.stderr

    table = sends(cfg)
    assert Counter(s["customer_key"] for s in table) == Counter(c["email"] for c in rows)  # one row each
    assert {s["status"] for s in table} == {"sent"}
    assert sorted(m.rcpt_tos[0] for m in smtpd.messages) == sorted(c["email"] for c in rows)  # one message each
    assert len({m.message_id for m in smtpd.messages}) == len(rows)
    # the rows queued before the kill kept their Message-ID
    assert {s["customer_key"]: s["message_id"] for s in table if s["customer_key"] in queued_ids} == queued_ids
