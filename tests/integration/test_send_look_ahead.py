"""The next message is rendered while the server decides about the current one (issue #18, bench_send).

What must not change: what each customer receives, and what is recorded.
A message prepared ahead belongs to its pass: a pass that stops before its
turn drops it, and the next pass renders it again from the files as they are
then (templates are read as on disk at each pass, issue #17). A message that
cannot be built fails at its own turn, the others go.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crm_automation.worker import Worker
from crm_automation.workspace import Clock, Workspace
from tests.fixtures.core import db_rows, make_workspace

pytestmark = pytest.mark.integration

PROMO = '[[campaign]]\nid = "promo"\ntemplate = "hello"\ntrigger = "at"\nat = "2026-01-01T10:00"\n'
T0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)


def _workspace(tmp_path, smtpd, rows):
    outbound = (f'transport = "smtp"\nhost = "{smtpd.host}"\nport = {smtpd.port}\nsecurity = "none"\n'
                'timeout = 10')
    return make_workspace(tmp_path / "ws", rows=rows, campaigns=PROMO, outbound=outbound,
                          templates={"hello.txt": "Subject: Old {{ customer.name }}\n\nHi {{ customer.name }}\n"})


def _rows(n):
    return [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": "lead", "Owner": "owner@example.com"}
            for i in range(n)]


def test_a_message_prepared_ahead_is_dropped_when_the_pass_stops_and_rendered_again_next_pass(tmp_path, smtpd):
    cfg = _workspace(tmp_path, smtpd, _rows(3))
    w = Worker(Workspace.load(cfg), clock=Clock(T0))
    try:
        w.sync()
        assert w.send(limit=1).stats["sent"] == 1  # the second message was rendered during the first's 250
        (cfg.parent / "email_templates" / "hello.txt").write_text(
            "Subject: New {{ customer.name }}\n\nHi {{ customer.name }}\n", encoding="utf-8")
        assert w.send().stats["sent"] == 2  # the same worker, its next pass
    finally:
        w.close()
    subjects = [str(m.message["Subject"]) for m in smtpd.messages]
    assert subjects == ["Old Customer 0", "New Customer 1", "New Customer 2"]
    assert db_rows(cfg.parent / "var" / "crm.sqlite", "SELECT subject FROM activities WHERE kind = 'email_out' "
                                                       "ORDER BY id") == [(s,) for s in subjects]


def test_a_message_that_cannot_be_built_ahead_fails_at_its_turn_and_the_rest_go(tmp_path, smtpd):
    rows = _rows(3)
    rows[1]["Name"] = "Bad"
    cfg = _workspace(tmp_path, smtpd, rows)
    (cfg.parent / "email_templates" / "hello.txt").write_text(
        "Subject: Hello {{ customer.name }}\n\n{{ (1 // 0) if customer.name == 'Bad' else '' }}Hi\n",
        encoding="utf-8")
    w = Worker(Workspace.load(cfg), clock=Clock(T0))
    try:
        w.sync()
        res = w.send()
    finally:
        w.close()
    assert (res.stats["sent"], res.stats["failed"]) == (2, 1)
    assert sorted(r for m in smtpd.messages for r in m.rcpt_tos) == ["c0@example.com", "c2@example.com"]
    assert db_rows(cfg.parent / "var" / "crm.sqlite", "SELECT customer_key, status FROM sends ORDER BY id") == [
        ("c0@example.com", "sent"), ("c1@example.com", "failed"), ("c2@example.com", "sent")]
