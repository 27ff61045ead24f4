"""Issue #17 items 7 and 8 through a whole send pass: one bad recipient first in the queue never stops the rest.

`crm-automation send` / `run --once` run as subprocesses against a real
aiosmtpd server in this process; the server says what each address received,
the ``sends`` and ``activities`` tables what the worker recorded.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from datetime import datetime, timedelta
from email import policy
from email.parser import Parser
from itertools import pairwise
from pathlib import Path

import pytest

from crm_automation.models import Kind, Permanence
from crm_automation.store.repo import Store
from tests.integration.test_send_kill import cli, customers, sends, write_workspace

pytestmark = pytest.mark.integration

T0 = datetime.fromisoformat("2027-01-10T02:00:00+00:00")


def at(delta: timedelta) -> str:
    return (T0 + delta).isoformat()


def rows_of(cfg: Path, sql: str, *args: object) -> list[dict]:
    con = sqlite3.connect(cfg.parent / "var" / "crm.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, args)]
    finally:
        con.close()


def received(srv) -> Counter[str]:
    """How many messages each address received."""
    return Counter(r for m in srv.messages for r in m.rcpt_tos)


# -- item 7: answers by what they mean -------------------------------------------------------------------


def test_a_full_mailbox_first_in_the_queue_is_a_soft_bounce_and_everyone_else_is_mailed(tmp_path, smtpd):
    rows = customers(5)
    first = rows[0]["email"]
    cfg = write_workspace(tmp_path, smtpd, rows)
    with cfg.open("a", encoding="utf-8") as f:
        f.write("\n[inbound]\nsoft_bounce_limit = 1\n")
    assert cli(cfg, "sync").returncode == 0
    # "quota" in the words, as real servers write it: once taken for a sending quota that stalled the queue.
    smtpd.handler.reject[first] = f"552 5.2.2 <{first}>: Recipient address rejected: Mailbox full, quota exceeded"
    r = cli(cfg, "send")
    assert r.returncode == 1, r.stdout + r.stderr  # done, one send failed
    assert "sending quota" not in r.stderr
    assert received(smtpd) == Counter({row["email"]: 1 for row in rows[1:]})
    by_key = {s["customer_key"]: s for s in sends(cfg)}
    assert by_key[first]["status"] == "failed"
    assert "5.2.2" in by_key[first]["error"] and "Mailbox full" in by_key[first]["error"]
    assert {by_key[row["email"]]["status"] for row in rows[1:]} == {"sent"}
    [bounce] = rows_of(cfg, "SELECT * FROM activities WHERE kind = 'bounce'")
    details = json.loads(bounce["details"])
    assert bounce["customer_key"] == first and bounce["campaign"] == "promo"
    assert details["permanence"] == "soft" and details["recipient"] == first and details["status"] == "5.2.2"
    assert details["original_message_id"] == by_key[first]["message_id"]
    # What the planner reads (History.lost): a soft bounce of campaign promo, so that sequence stops.
    store = Store.open(cfg.parent / "var" / "crm.sqlite")
    try:
        events = [e for e in store.inbound_history() if e.customer_key == first]
    finally:
        store.close()
    assert [(e.kind, e.permanence, e.campaign) for e in events] == [(Kind.BOUNCE, Permanence.SOFT, "promo")]
    # Counted in the soft-bounce score like a fetched soft bounce: the limit of 1 is reached.
    assert rows_of(cfg, "SELECT reason FROM suppressions WHERE email = ?", first) == [{"reason": "soft_bounces"}]
    assert rows_of(cfg, "SELECT email_status FROM customers WHERE key = ?", first) == [{"email_status": "bounced"}]


def test_452_4_2_2_fails_that_follow_up_alone_and_never_retries_it(tmp_path, smtpd):
    rows = customers(3)
    full = rows[0]["email"]
    cfg = write_workspace(tmp_path, smtpd, rows)
    (tmp_path / "mappings" / "campaigns.toml").write_text(
        '[[campaign]]\nid = "promo"\ntemplate = "promo"\ntrigger = "at"\nat = "2026-01-01T10:00"\n'
        'follow_up = [{ after_days = 1, template = "promo" }, { after_days = 2, template = "promo" }]\n',
        encoding="utf-8")
    assert cli(cfg, "sync").returncode == 0
    assert cli(cfg, "--now", at(timedelta()), "send").returncode == 0
    smtpd.handler.reject[full] = "452 4.2.2 The email account that you tried to reach is over quota"
    r = cli(cfg, "--now", at(timedelta(days=1, hours=1)), "send")
    assert r.returncode == 1, r.stdout + r.stderr
    del smtpd.handler.reject[full]
    r = cli(cfg, "--now", at(timedelta(days=5)), "send")
    assert r.returncode == 0, r.stdout + r.stderr
    steps = {(s["customer_key"], s["step"]): s for s in sends(cfg)}
    assert steps[(full, 1)]["status"] == "failed" and "4.2.2" in steps[(full, 1)]["error"]
    assert steps.get((full, 2), {}).get("status") in (None, "skipped")  # the sequence ends there
    assert received(smtpd) == Counter({full: 1, rows[1]["email"]: 3, rows[2]["email"]: 3})
    assert rows_of(cfg, "SELECT COUNT(*) AS n FROM suppressions") == [{"n": 0}]  # 1 of the default 3


def test_a_per_recipient_421_first_in_the_queue_backs_off_alone_then_fails(tmp_path, smtpd):
    rows = customers(4)
    slow = rows[0]["email"]
    cfg = write_workspace(tmp_path, smtpd, rows)
    assert cli(cfg, "sync").returncode == 0
    smtpd.handler.reject[slow] = "421 4.7.0 Try again later, closing connection"
    r = cli(cfg, "--now", at(timedelta()), "send")
    assert r.returncode in (0, 1), r.stdout + r.stderr
    # Everyone behind it was mailed in the same pass, once each, over a new connection.
    assert received(smtpd) == Counter({row["email"]: 1 for row in rows[1:]})
    assert smtpd.connections == 2
    [waiting] = [s for s in sends(cfg) if s["customer_key"] == slow]
    assert waiting["status"] == "queued" and "421" in waiting["error"]
    assert datetime.fromisoformat(waiting["next_attempt_at"]) >= T0 + timedelta(minutes=5)
    # The next pass a minute later does not try it again: it waits alone.
    cli(cfg, "--now", at(timedelta(minutes=1)), "send")
    assert smtpd.handler.rcpt_seen[slow] == 1
    # Later passes try it with a growing delay, then give up with the reason.
    dues = []
    for n in range(1, 30):
        before = smtpd.handler.rcpt_seen[slow]
        [s] = [s for s in sends(cfg) if s["customer_key"] == slow]
        if s["status"] != "queued":
            break
        due = datetime.fromisoformat(s["next_attempt_at"])
        cli(cfg, "--now", due.isoformat(), "send")
        assert smtpd.handler.rcpt_seen[slow] == before + 1, n
        dues.append(due)
    [s] = [s for s in sends(cfg) if s["customer_key"] == slow]
    assert s["status"] == "failed", s
    assert "gave up after 10 attempts" in s["error"] and "421" in s["error"]
    assert smtpd.handler.rcpt_seen[slow] == 10
    gaps = [b - a for a, b in pairwise(dues)]
    assert gaps == sorted(gaps) and gaps[-1] <= timedelta(hours=6)  # growing, capped
    assert received(smtpd) == Counter({row["email"]: 1 for row in rows[1:]})


def test_refusals_of_single_recipients_never_trip_the_5xx_breaker(tmp_path, smtpd):
    rows = customers(7)
    cfg = write_workspace(tmp_path, smtpd, rows)
    assert cli(cfg, "sync").returncode == 0
    refusals = {
        rows[0]["email"]: "550 5.7.1 <{0}>: Recipient address rejected: Access denied",
        rows[1]["email"]: "550 5.2.1 <{0}>: mailbox disabled, not accepting messages",
        rows[2]["email"]: "554 5.7.1 <{0}>: Recipient address rejected: not accepting mail from you",
        rows[3]["email"]: "550 5.1.1 <{0}>: Recipient address rejected: User unknown",
    }
    for addr, reply in refusals.items():
        smtpd.handler.reject[addr] = reply.format(addr)
    r = cli(cfg, "send")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "in a row were refused" not in r.stderr
    assert received(smtpd) == Counter({row["email"]: 1 for row in rows[4:]})
    by_key = {s["customer_key"]: s["status"] for s in sends(cfg)}
    assert [by_key[row["email"]] for row in rows] == ["failed"] * 4 + ["sent"] * 3


# -- item 8: internationalized addresses ----------------------------------------------------------------

IDN_ROWS = [
    {"email": "张三@example.cn", "name": "张三", "company": "甲"},
    {"email": "李四@example.cn", "name": "李四", "company": "乙"},
    {"email": "王五@example.cn", "name": "王五", "company": "丙"},
    {"email": "alice@例子.中国", "name": "Alice", "company": "丁"},
    {"email": "bob@example.net", "name": "Bob", "company": "戊"},
]


def _utf8(raw: bytes):
    return Parser(policy=policy.default).parsestr(raw.decode("utf-8"))


def test_without_smtputf8_each_non_ascii_local_part_fails_alone_and_the_run_goes_on(tmp_path, smtp_server):
    srv = smtp_server(enable_SMTPUTF8=False)
    cfg = write_workspace(tmp_path, srv, IDN_ROWS)
    r = cli(cfg, "run", "--once")  # the scheduled worker's cycle: sync, fetch, send, write-back
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 1, r.stdout + r.stderr
    by_key = {s["customer_key"]: s for s in sends(cfg)}
    for name in ("张三", "李四", "王五"):
        s = by_key[f"{name}@example.cn"]
        assert s["status"] == "failed"
        assert "SMTPUTF8" in s["error"] and f"{name}@example.cn" in s["error"]
    assert "in a row were refused" not in r.stderr  # three in a row, none counted by the breaker
    assert by_key["alice@例子.中国"]["status"] == by_key["bob@example.net"]["status"] == "sent"
    assert received(srv) == Counter({"alice@xn--fsqu00a.xn--fiqs8s": 1, "bob@example.net": 1})
    alice = next(m for m in srv.messages if m.rcpt_tos == ["alice@xn--fsqu00a.xn--fiqs8s"])
    assert alice.raw.isascii()  # nothing needs SMTPUTF8: the domain is A-labels in the header too
    assert "To: Alice <alice@xn--fsqu00a.xn--fiqs8s>" in alice.raw.decode("ascii")


def test_with_smtputf8_every_address_is_mailed_and_the_headers_carry_utf8(tmp_path, smtp_server):
    srv = smtp_server(enable_SMTPUTF8=True)
    cfg = write_workspace(tmp_path, srv, IDN_ROWS)
    assert cli(cfg, "sync").returncode == 0
    r = cli(cfg, "send")
    assert r.returncode == 0, r.stdout + r.stderr
    assert received(srv) == Counter({"张三@example.cn": 1, "李四@example.cn": 1, "王五@example.cn": 1,
                                     "alice@xn--fsqu00a.xn--fiqs8s": 1, "bob@example.net": 1})
    zhang = next(m for m in srv.messages if m.rcpt_tos == ["张三@example.cn"])
    assert "SMTPUTF8" in [o.upper() for o in zhang.mail_options]
    msg = _utf8(zhang.raw)
    assert msg["To"].addresses[0].addr_spec == "张三@example.cn"
    assert msg["To"].addresses[0].display_name == "张三"
    assert "张三您好" in msg.get_body(("plain",)).get_content()
    bob = next(m for m in srv.messages if m.rcpt_tos == ["bob@example.net"])
    assert "SMTPUTF8" not in [o.upper() for o in bob.mail_options] and bob.raw.isascii()
    assert {s["status"] for s in sends(cfg)} == {"sent"}


def test_the_outbox_writes_internationalized_messages(tmp_path, smtpd):
    cfg = write_workspace(tmp_path, smtpd, IDN_ROWS)
    text = cfg.read_text(encoding="utf-8").replace('transport = "smtp"', 'transport = "outbox"\noutbox = "var/outbox"')
    cfg.write_text(text, encoding="utf-8")
    r = cli(cfg, "run", "--once")
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted((tmp_path / "var" / "outbox").glob("*.eml"))
    assert len(files) == len(IDN_ROWS)
    to = sorted(_utf8(p.read_bytes())["To"].addresses[0].addr_spec for p in files)
    assert to == sorted(["张三@example.cn", "李四@example.cn", "王五@example.cn", "alice@xn--fsqu00a.xn--fiqs8s",
                         "bob@example.net"])
    assert {s["status"] for s in sends(cfg)} == {"sent"}
    assert smtpd.messages == []
