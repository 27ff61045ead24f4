"""Several SMTP accounts (issue #20, part 3), end to end: real aiosmtpd servers, one per account, on both engines.

``[outbound]``'s own server is account "default" (``sends.account`` NULL);
``[[outbound.accounts]]`` entries are named. What each server received is
asserted on the server side: who got a message, its From, its envelope.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from crm_automation.send.accounts import Router, accounts_of
from crm_automation.stage import StageResult
from crm_automation.store.sends import SendKind, SendRow, SendStatus
from crm_automation.worker import Worker
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value
from tests.fixtures.smtpd import TEST_USER
from tests.integration.test_claims_workers import T0, FrozenClock, in_threads, queued_by_one_worker

pytestmark = pytest.mark.integration

CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
PINNED = ('[[campaign]]\nid = "leads"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
          'where = { stage = "lead" }\naccount = "a"\n\n'
          '[[campaign]]\nid = "won"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
          'where = { stage = "won" }\naccount = "default"\n')
A_FROM = "Team A <a@a.example>"


def people(n: int, won_from: int | None = None) -> list[dict[str, str]]:
    return [{"Email": f"c{i:03d}@example.com", "Name": f"Customer {i}",
             "Stage": "won" if won_from is not None and i >= won_from else "lead", "Owner": "o@example.com"}
            for i in range(n)]


def server_keys(host: str, port: int, extra: str = "") -> str:
    return f'host = "{host}"\nport = {port}\nsecurity = "none"\ntimeout = 5\n{extra}'


def workspace(tmp_path: Path, database: str, rows: list[dict[str, str]], default: tuple[str, int],
              a: tuple[str, int], *, campaigns: str = CAMPAIGN, default_day: int = 1000, a_day: int = 1000,
              a_extra: str = "", a_minute: int = 0) -> Path:
    """``[outbound]`` on ``default``'s server, account "a" on ``a``'s, each with its own From."""
    account = (f'\n[[outbound.accounts]]\nname = "a"\n{server_keys(*a, a_extra)}from = "{A_FROM}"\n'
               f"max_per_minute = {a_minute}\nmax_per_day = {a_day}\n")
    cfg = make_workspace(tmp_path / "ws", rows=rows, campaigns=campaigns, database=database,
                         outbound='transport = "smtp"\n' + server_keys(*default), extra_config=account)
    cfg.write_text(cfg.read_text().replace("max_per_day = 0\n", f"max_per_day = {default_day}\n", 1),
                   encoding="utf-8")
    return cfg


def one_pass(cfg: Path) -> StageResult:
    w = Worker(Workspace.load(cfg))
    try:
        assert w.sync().ok
        return w.send()
    finally:
        w.close()


def sends(cfg: Path) -> dict[str, tuple[str, str | None]]:
    """customer email -> (status, sends.account)."""
    store = Workspace.load(cfg).open_store()
    try:
        return {c: (s, a) for c, s, a in store.conn.execute(
            "SELECT email, status, account FROM sends WHERE kind = 'campaign_step'")}
    finally:
        store.close()


def expected_account(cfg: Path, email: str, campaign: str = "hello") -> str:
    """The account the rule names for a customer (the key of these workspaces is the email)."""
    ws = Workspace.load(cfg)
    router = Router(accounts_of(ws.cfg.outbound), {c.id: c.account for c in ws.campaigns if c.account})
    row = SendRow(0, campaign, 0, email, SendStatus.QUEUED, None, None, None, None, email, 0, None, "s",
                  SendKind.CAMPAIGN_STEP)
    return router.account_for(row).label


def closed_port() -> int:
    """A loopback port nothing listens on: an SMTP server that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_each_customer_gets_one_message_through_the_account_the_rule_names(tmp_path, smtp_server, log_location):
    """Two real servers as two accounts with different From: each customer once, by its account, recorded."""
    srv_default, srv_a = smtp_server(), smtp_server()
    n = 40
    cfg = workspace(tmp_path, database_value(log_location), people(n), (srv_default.host, srv_default.port),
                    (srv_a.host, srv_a.port))
    res = one_pass(cfg)
    assert res.error is None and res.stats["sent"] == n, res
    by_server = {"default": srv_default.messages, "a": srv_a.messages}
    got = Counter(m.rcpt_tos[0] for ms in by_server.values() for m in ms)
    assert got == Counter(r["Email"] for r in people(n))  # every customer exactly once
    log = sends(cfg)
    for name, messages in by_server.items():
        assert messages, f"account {name} sent nothing: the rule should spread 40 customers over equal weights"
        for m in messages:
            to = m.rcpt_tos[0]
            assert expected_account(cfg, to) == name
            assert m.message["From"] == (A_FROM if name == "a" else "Sales <sales@example.com>")
            assert m.mail_from == ("a@a.example" if name == "a" else "sales@example.com")
            assert log[to] == ("sent", None if name == "default" else "a")
    # the timeline's email_out says which account sent it
    store = Workspace.load(cfg).open_store()
    try:
        sources = Counter(s for (s,) in store.conn.execute("SELECT source FROM activities WHERE kind = 'email_out'"))
    finally:
        store.close()
    assert sources == {"smtp": len(srv_default.messages), "smtp:a": len(srv_a.messages)}


def test_an_account_at_its_max_per_day_waits_while_the_other_sends_all_of_its_own(tmp_path, smtp_server,
                                                                                   log_location):
    srv_default, srv_a = smtp_server(), smtp_server()
    cfg = workspace(tmp_path, database_value(log_location), people(20, won_from=10),
                    (srv_default.host, srv_default.port), (srv_a.host, srv_a.port), campaigns=PINNED, a_day=5,
                    default_day=0)
    res = one_pass(cfg)
    assert res.error is None, res
    assert len(srv_a.messages) == 5 and len(srv_default.messages) == 10
    log = sends(cfg)
    assert Counter(log.values()) == {("sent", "a"): 5, ("queued", None): 5, ("sent", None): 10}
    assert "account a: max_per_day 5 reached (rolling 24 hours), its sends stay queued" in res.stats["note"]
    # a second pass the same day sends nothing more through a: the limit is counted in the log
    res = one_pass(cfg)
    assert len(srv_a.messages) == 5 and res.stats["sent"] == 0
    assert "account a: max_per_day 5" in res.stats["note"]


def test_an_accounts_max_per_day_holds_across_two_workers_in_total(tmp_path, smtp_server, pg_log):
    """Two workers at once on one PostgreSQL log: account a's 5 a day are 5 in all, not 5 each."""
    srv_default, srv_a = smtp_server(), smtp_server()
    srv_a.handler.data_delay = 0.01  # both passes are handing a's sends over at the same time
    cfg = workspace(tmp_path, pg_log, people(30, won_from=20), (srv_default.host, srv_default.port),
                    (srv_a.host, srv_a.port), campaigns=PINNED, a_day=5, default_day=0)
    queued_by_one_worker(cfg)
    start = threading.Barrier(2, timeout=60)

    class Together:  # both passes begin handing over at the same instant
        def __call__(self, desc: str, total: int | None) -> Together:
            if desc == "send":
                start.wait()
            return self

        def advance(self, k: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    results = in_threads(2, lambda: Worker(Workspace.load(cfg), progress=Together()))
    assert len(srv_a.messages) == 5, [res.stats for _, res in results]
    assert len(srv_default.messages) == 10
    log = sends(cfg)
    assert Counter(log.values()) == {("sent", "a"): 5, ("queued", None): 15, ("sent", None): 10}


def test_sends_of_an_account_that_must_wait_for_max_per_minute_are_set_aside_for_the_others(tmp_path,
                                                                                            smtp_server):
    """a may send 2 a minute; the clock stands still and a wait ends the pass: the other account's sends all go."""
    srv_default, srv_a = smtp_server(), smtp_server()
    n = 40
    cfg = workspace(tmp_path, str(tmp_path / "crm.sqlite"), people(n), (srv_default.host, srv_default.port),
                    (srv_a.host, srv_a.port), a_minute=2)
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return True  # asked to stop while waiting

    w = Worker(Workspace.load(cfg), clock=FrozenClock(T0), wait=wait)
    try:
        assert w.sync().ok
        res = w.send()
    finally:
        w.close()
    for_a = {r["Email"] for r in people(n) if expected_account(cfg, r["Email"]) == "a"}
    assert len(for_a) > 2
    assert len(srv_a.messages) == 2
    assert {m.rcpt_tos[0] for m in srv_default.messages} == {r["Email"] for r in people(n)} - for_a
    assert len(waits) == 1  # waited only once every claimed send's account had to wait
    assert Counter(sends(cfg)[e] for e in for_a) == {("sent", "a"): 2, ("queued", None): len(for_a) - 2}
    assert res.error is None


@pytest.mark.parametrize("trouble", ["down", "login refused"])
def test_an_account_that_cannot_log_in_leaves_its_sends_queued_and_the_other_sends(tmp_path, smtp_server,
                                                                                   monkeypatch, trouble):
    srv_default = smtp_server()
    if trouble == "down":
        a, extra = ("127.0.0.1", closed_port()), ""
    else:
        srv_a = smtp_server(tls="starttls", auth=True)
        monkeypatch.setenv("CRM_TEST_A_PW", "not-the-password")
        a = (srv_a.host, srv_a.port)
        extra = (f'username = "{TEST_USER}"\npassword_env = "CRM_TEST_A_PW"\nca_file = "{srv_a.ca_file}"\n')
    n = 30
    cfg = workspace(tmp_path, str(tmp_path / "crm.sqlite"), people(n), (srv_default.host, srv_default.port), a,
                    a_extra=extra)
    if trouble == "login refused":
        cfg.write_text(cfg.read_text().replace('security = "none"\ntimeout = 5\nusername',
                                               'security = "starttls"\ntimeout = 5\nusername'), encoding="utf-8")
    res = one_pass(cfg)
    assert res.error is None, res  # another account is left: the pass is not stopped
    for_a = {r["Email"] for r in people(n) if expected_account(cfg, r["Email"]) == "a"}
    assert 0 < len(for_a) < n
    assert {m.rcpt_tos[0] for m in srv_default.messages} == {r["Email"] for r in people(n)} - for_a
    log = sends(cfg)
    assert {log[e] for e in for_a} == {("queued", None)}  # never tried: queued for a later pass
    (problem,) = [p for p in res.problems if p.startswith("account a: ")]
    assert ("cannot connect" if trouble == "down" else "login") in problem.lower()
    assert "the other accounts carry on" in problem
    assert "not-the-password" not in " ".join(res.problems)


def test_a_streak_of_5xx_about_the_sender_stops_only_that_account(tmp_path, smtp_server):
    srv_default, srv_a = smtp_server(), smtp_server()
    srv_a.handler.data_reply = "554 5.7.1 Sender address rejected: not owned by user"
    n = 40
    cfg = workspace(tmp_path, str(tmp_path / "crm.sqlite"), people(n), (srv_default.host, srv_default.port),
                    (srv_a.host, srv_a.port))
    res = one_pass(cfg)
    assert res.error is None, res
    for_a = {r["Email"] for r in people(n) if expected_account(cfg, r["Email"]) == "a"}
    assert len(for_a) > 3
    log = sends(cfg)
    assert Counter(log[e][0] for e in for_a) == {"failed": 3, "queued": len(for_a) - 3}
    assert {m.rcpt_tos[0] for m in srv_default.messages} == {r["Email"] for r in people(n)} - for_a
    assert any(p.startswith("account a: 3 messages in a row were refused") for p in res.problems), res.problems


def test_a_quota_answer_stops_only_that_account_and_its_send_waits_an_hour(tmp_path, smtp_server):
    srv_default, srv_a = smtp_server(), smtp_server()
    srv_a.handler.data_reply = "550 5.4.5 Daily user sending quota exceeded."
    n = 30
    cfg = workspace(tmp_path, str(tmp_path / "crm.sqlite"), people(n), (srv_default.host, srv_default.port),
                    (srv_a.host, srv_a.port))
    res = one_pass(cfg)
    assert res.error is None, res
    for_a = {r["Email"] for r in people(n) if expected_account(cfg, r["Email"]) == "a"}
    assert {m.rcpt_tos[0] for m in srv_default.messages} == {r["Email"] for r in people(n)} - for_a
    assert srv_a.handler.data_seen == 1  # one refused, then a was left alone
    # the refused one waits an hour (it names a: the account that tried it), the others were never tried
    assert Counter(sends(cfg)[e] for e in for_a) == {("queued", "a"): 1, ("queued", None): len(for_a) - 1}
    assert res.stats["retry_later"] == 1
    assert any(p.startswith("account a: ") and "quota" in p for p in res.problems), res.problems


def test_the_pass_stops_with_an_error_when_no_account_is_left(tmp_path):
    cfg = workspace(tmp_path, str(tmp_path / "crm.sqlite"), people(10), ("127.0.0.1", closed_port()),
                    ("127.0.0.1", closed_port()))
    res = one_pass(cfg)
    assert res.error is not None
    assert str(res.error).startswith("no SMTP account can send any more in this pass (last: account ")
    assert set(sends(cfg).values()) == {("queued", None)}
