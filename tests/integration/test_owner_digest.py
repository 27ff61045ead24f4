"""Issue #21 item 2: each owner's daily digest, through ``run --once --now`` against a real aiosmtpd server.

A CSV workspace (two owners, one owner value that is no address, one that is
suppressed) with a Maildir inbox; the worker sends over SMTP to the
in-process server, which records what it received. A simulated month of
cycles at 08:00 and 09:00 local time checks the schedule (once per owner and
workday, at or after ``[digest] at``, none on weekends, none when there is
nothing to say); other tests check the contents, the refused owners, and a
worker killed in the middle of handing the digests over.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import date, datetime, timedelta
from email.header import decode_header, make_header
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm_automation.app.digest import digest_for, owner_problems
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value

pytestmark = pytest.mark.integration

SH = ZoneInfo("Asia/Shanghai")
REPO = Path(__file__).resolve().parents[2]
MAPPING = """key = "email"
[fields]
email = { column = "Email", type = "email", required = true }
name  = { column = "Name", required = true }
stage = { column = "Stage" }
owner = { column = "Owner" }
[writeback]
last_sent = "Last sent"
last_reply = "Last reply"
email_status = "Email status"
[stale_after_days]
quote = 7
"""
DIGEST = '\n[digest]\nat = "08:30"\n'
ROWS = [
    {"Email": "a1@example.com", "Name": "Alpha One", "Stage": "quote", "Owner": "Alice@Example.com"},
    {"Email": "a2@example.com", "Name": "Alpha Two", "Stage": "lead", "Owner": "alice@example.com"},
    {"Email": "b1@example.com", "Name": "Beta One", "Stage": "lead", "Owner": "bob@example.com"},
    {"Email": "x1@example.com", "Name": "Nobody's", "Stage": "lead", "Owner": "not an address"},
    {"Email": "s1@example.com", "Name": "Suppressed's", "Stage": "lead", "Owner": "gone@example.com"},
]
_n = 0


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SH)


def workspace(root: Path, srv, *, config: str = DIGEST, rows: list[dict[str, str]] = ROWS,
              campaigns: str = "", database: str = "var/crm.sqlite") -> Path:
    outbound = f'transport = "smtp"\nhost = "{srv.host}"\nport = {srv.port}\nsecurity = "none"\ntimeout = 10'
    return make_workspace(root, rows=rows, mapping=MAPPING, outbound=outbound, campaigns=campaigns,
                          database=database,
                          extra_config=f'\n[serve]\npublic_url = "https://crm.example.com"\n{config}')


def drop(root: Path, who: str, mid: str, date_: str, body: str, *, subject: str = "Re: 报价") -> None:
    global _n
    _n += 1
    raw = (f"From: {who}\nTo: sales@example.com\nSubject: {subject}\nMessage-ID: {mid}\nDate: {date_}\n"
           f"Content-Type: text/plain; charset=utf-8\n\n{body}\n")
    (root / "inbox" / "new" / f"{_n}.msg").write_bytes(raw.replace("\n", "\r\n").encode())


def run(cli, cfg: Path, now: str) -> None:
    r = cli("run", "--once", "--config", str(cfg), "--now", now)
    assert r.code in (0, 1), r.out + r.err


def digests(srv) -> list[tuple[str, str]]:
    """(recipient, local day from the subject's Date) of every digest the server received."""
    out = []
    for m in srv.messages:
        msg = m.message
        if "digest" in str(msg["Subject"]).lower() or "摘要" in str(msg["Subject"]):
            day = msg["Date"].datetime.astimezone(SH).date().isoformat()
            out.append((m.rcpt_tos[0], day))
    return out


def subject(msg) -> str:
    return str(make_header(decode_header(msg["Subject"])))


def text_of(msg) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return part.get_content()


def test_a_simulated_month_one_digest_per_owner_and_workday_none_on_weekends(tmp_path, smtpd, cli):
    cfg = workspace(tmp_path, smtpd)
    start = date(2026, 11, 2)  # a Monday
    (tmp_path / "suppress").write_text("", encoding="utf-8")
    r = cli("suppress", "add", "gone@example.com", "--config", str(cfg))
    assert r.code == 0, r.err
    replies = {date(2026, 11, 4): "a2@example.com", date(2026, 11, 13): "b1@example.com"}
    for i in range(30):
        day = start + timedelta(days=i)
        run(cli, cfg, f"{day.isoformat()}T08:00")  # before [digest] at: never a digest
        assert all(d != day.isoformat() for _, d in digests(smtpd)), f"a digest before 08:30 on {day}"
        if day in replies:
            drop(tmp_path, replies[day], f"<r{i}@example.com>", f"{day:%a, %d %b %Y} 08:10:00 +0800",
                 "好的，请把报价单发给我。")
        run(cli, cfg, f"{day.isoformat()}T09:00")
        run(cli, cfg, f"{day.isoformat()}T17:00")  # later the same day: nothing more
    got = Counter(digests(smtpd))
    assert max(got.values()) == 1, got  # never two for one owner and day
    alice = sorted(d for (to, d) in got if to == "alice@example.com")
    bob = sorted(d for (to, d) in got if to == "bob@example.com")
    weekdays = [(start + timedelta(days=i)) for i in range(30) if (start + timedelta(days=i)).weekday() < 5]
    assert all(date.fromisoformat(d).weekday() < 5 for d in alice + bob)  # none on weekends
    # Alice: her customers arrive on Monday (new customers); none on Tuesday (nothing to say); Wednesday a reply,
    # which nobody answers: from Thursday it has waited more than 8 working hours and tops every digest (and her
    # quote customer is stale from the 10th).
    assert alice == ["2026-11-02", *(d.isoformat() for d in weekdays if d >= date(2026, 11, 4))]
    # Bob: his new customer (Monday 2nd), nothing to say until Friday 13th's reply, which waits from Monday on
    assert bob == ["2026-11-02", "2026-11-13", *(d.isoformat() for d in weekdays if d >= date(2026, 11, 16))]
    # the refused owners were never mailed
    assert not [m for m in smtpd.messages if set(m.rcpt_tos) & {"gone@example.com", "not an address"}]
    con = sqlite3.connect(tmp_path / "var" / "crm.sqlite")
    rows = con.execute("SELECT customer_key, step_id, status, error FROM sends WHERE kind = 'owner_digest'").fetchall()
    con.close()
    assert Counter((k, d) for k, d, _, _ in rows).most_common(1)[0][1] == 1  # one row an owner and day
    assert ("bob@example.com", "2026-11-03", "skipped", "nothing to say") in rows
    assert any(k == "gone@example.com" and st == "skipped" and "suppression list" in (e or "")
               for k, _, st, e in rows)
    assert not any(d in {"2026-11-07", "2026-11-08"} for _, d, _, _ in rows)  # a weekend: not even planned


def test_the_digest_says_what_happened_with_links(tmp_path, smtpd, cli, log_location):
    """On both engines (issue #20): the digest's reads (events, owner changes, follow-ups today) on PostgreSQL too."""
    campaigns = ('[[campaign]]\nid = "welcome"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
                 'follow_up = [{ after_days = 3, template = "hello" }]\n')
    rows = [*ROWS, {"Email": "a3@example.com", "Name": "Alpha Three", "Stage": "lead", "Owner": "bob@example.com"}]
    cfg = workspace(tmp_path, smtpd, rows=rows, campaigns=campaigns, database=database_value(log_location))
    run(cli, cfg, "2026-11-02T10:00")  # Monday: everyone welcomed; first digests only tomorrow
    smtpd.handler.reset()
    drop(tmp_path, "a2@example.com", "<r1@example.com>", "Mon, 02 Nov 2026 18:00:00 +0800",
         "好的，请把报价单发给我。\n\n在 2026年11月2日 10:00，Sales <sales@example.com> 写道：\n> Hi Alpha Two")
    run(cli, cfg, "2026-11-03T07:00")  # fetches the reply; 07:00 is before the digest
    # the team gives a3 to Alice in the sheet
    csv_path = tmp_path / "customers.csv"
    csv_path.write_text(csv_path.read_text(encoding="utf-8").replace(
        "a3@example.com,Alpha Three,lead,bob@example.com", "a3@example.com,Alpha Three,lead,alice@example.com"),
        encoding="utf-8")
    ws = Workspace.load(cfg)
    run(cli, cfg, "2026-11-03T08:00")
    d = digest_for(ws, "ALICE@example.com", at("2026-11-03T08:40"))
    assert [e.customer.key for e in d.replies] == ["a2@example.com"]
    assert d.replies[0].text == "好的，请把报价单发给我。"  # what she newly wrote, no quoted history
    assert d.replies[0].customer.link == "https://crm.example.com/customers/a2@example.com"
    assert [(e.customer.key, e.text) for e in d.assigned] == [("a3@example.com", "bob@example.com")]
    run(cli, cfg, "2026-11-03T08:40")
    (alice,) = [m.message for m in smtpd.messages if m.rcpt_tos == ["alice@example.com"]]
    assert alice["Auto-Submitted"] == "auto-generated" and alice["List-Unsubscribe"] is None
    body = text_of(alice)
    assert "好的，请把报价单发给我。" in body and "写道" not in body
    assert "https://crm.example.com/customers/a2@example.com" in body
    assert "Alpha Three" in body and "bob@example.com" in body  # newly given to Alice, from Bob
    assert alice.get_body(preferencelist=("html",)) is not None
    # the follow-up of the 5th (3 days after the 2nd) shows in Thursday's digest as going out today
    smtpd.handler.reset()
    run(cli, cfg, "2026-11-05T08:40")
    d5 = [m.message for m in smtpd.messages if m.rcpt_tos == ["alice@example.com"]]
    assert d5, "a follow-up due today is something to say"
    assert "welcome" in text_of(d5[0])
    # the digest is no contact with anyone, and no customer's timeline shows it
    store = ws.open_store(read_only=True)
    outs = store.conn.execute("SELECT customer_key FROM activities WHERE kind = 'email_out' "
                              "AND campaign = 'owner-digest'").fetchall()
    store.close()
    assert outs and all(k is None for (k,) in outs)


def test_a_digest_in_chinese_by_default_language(tmp_path, smtpd, cli):
    cfg = workspace(tmp_path, smtpd)
    text = cfg.read_text(encoding="utf-8").replace('[workspace]\n', '[workspace]\nlanguage = "zh-CN"\n')
    cfg.write_text(text, encoding="utf-8")
    run(cli, cfg, "2026-11-01T10:00")  # a Sunday: customers arrive, no digest on a weekend
    assert smtpd.messages == []
    drop(tmp_path, "a1@example.com", "<r1@example.com>", "Sun, 01 Nov 2026 18:00:00 +0800", "下周可以签合同。")
    run(cli, cfg, "2026-11-02T08:45")
    (msg,) = [m.message for m in smtpd.messages if m.rcpt_tos == ["alice@example.com"]]
    assert subject(msg).startswith("[CRM] 每日摘要 11月02日")
    assert "■ 新回复（1）" in text_of(msg) and "下周可以签合同。" in text_of(msg)


def test_a_workspace_template_overrides_the_shipped_one(tmp_path, smtpd, cli):
    cfg = workspace(tmp_path, smtpd)
    (tmp_path / "email_templates" / "digest.txt").write_text(
        "Subject: Morning {{ owner.email }}\n\n{% for r in digest.replies %}{{ r.name }}: {{ r.text }}\n{% endfor %}",
        encoding="utf-8")
    run(cli, cfg, "2026-11-01T10:00")
    drop(tmp_path, "a1@example.com", "<r1@example.com>", "Sun, 01 Nov 2026 18:00:00 +0800", "OK")
    run(cli, cfg, "2026-11-02T08:45")
    (msg,) = [m.message for m in smtpd.messages if m.rcpt_tos == ["alice@example.com"]]
    assert subject(msg) == "Morning alice@example.com" and text_of(msg).strip() == "Alpha One: OK"


def test_without_a_digest_section_nothing_is_sent(tmp_path, smtpd, cli):
    cfg = workspace(tmp_path, smtpd, config="")
    run(cli, cfg, "2026-11-02T10:00")
    run(cli, cfg, "2026-11-03T09:00")
    assert digests(smtpd) == [] and smtpd.messages == []


def test_refused_owners_are_reported_by_check_and_report(tmp_path, smtpd, cli):
    cfg = workspace(tmp_path, smtpd)
    assert cli("suppress", "add", "gone@example.com", "--config", str(cfg)).code == 0
    run(cli, cfg, "2026-11-02T10:00")
    problems = owner_problems(Workspace.load(cfg))
    assert [(p.owner, p.customers) for p in problems] == [
        ("gone@example.com", ("s1@example.com",)), ("not an address", ("x1@example.com",))]
    for verb in ("check", "report"):
        r = cli(verb, "--config", str(cfg))
        out = r.out + r.err
        assert "owner 'not an address' is not an address" in out and "x1@example.com" in out, (verb, out)
        assert "owner 'gone@example.com' is on the suppression list" in out and "s1@example.com" in out
    r = cli("report", "--json", "--config", str(cfg))
    assert '"owner_problems"' in r.out


# -- killed while handing the digests over ---------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.pop("CRM_AUTOMATION_CONFIG", None)
    return env


def _args(cfg: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "crm_automation", "--config", str(cfg), *args]


@pytest.mark.slow
def test_killed_mid_digest_pass_and_restarted_each_owner_gets_at_most_one(tmp_path, smtpd, cli):
    owners = 12
    rows = [{"Email": f"c{i}@example.com", "Name": f"客户{i}", "Stage": "lead", "Owner": f"owner{i}@example.com"}
            for i in range(owners)]
    cfg = workspace(tmp_path, smtpd, rows=rows)
    run(cli, cfg, "2026-11-02T07:00")  # Monday before 08:30: customers arrive, no digest yet
    smtpd.handler.data_delay = 0.3  # each digest takes a while to be accepted: the kill lands mid-pass
    proc = subprocess.Popen(_args(cfg, "-q", "send", "--now", "2026-11-02T08:45"), env=_env(), cwd=cfg.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert smtpd.handler.wait_for_count(3, timeout=60), "the digests did not start"
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=20)
    before = len(smtpd.messages)
    assert 3 <= before < owners, f"the kill landed outside the digest pass ({before} received)"
    smtpd.handler.data_delay = 0.0
    for now in ("2026-11-02T08:50", "2026-11-02T09:30", "2026-11-02T15:00"):
        r = subprocess.run(_args(cfg, "-q", "send", "--now", now), env=_env(), cwd=cfg.parent, capture_output=True,
                           text=True, timeout=120, check=False)
        assert r.returncode in (0, 1), r.stderr
    got = Counter(m.rcpt_tos[0] for m in smtpd.messages)
    assert max(got.values()) == 1, got  # never two for one owner
    con = sqlite3.connect(tmp_path / "var" / "crm.sqlite")
    statuses = Counter(s for (s,) in con.execute("SELECT status FROM sends WHERE kind = 'owner_digest'"))
    con.close()
    assert sum(statuses.values()) == owners and set(statuses) <= {"sent", "uncertain"}, statuses
    assert statuses["uncertain"] <= 1  # only the one the kill interrupted is unknown; it is not sent again
    assert len(got) >= owners - 1


def test_a_broken_digest_template_holds_the_digests_until_fixed(tmp_path, smtpd, cli):
    cfg = workspace(tmp_path, smtpd)
    tpl = tmp_path / "email_templates" / "digest.txt"
    tpl.write_text("Subject: Morning\n\n{{ customer.name }}\n", encoding="utf-8")  # a campaign's name
    r = cli("check", "--config", str(cfg))
    assert r.code == 2 and "digest.txt line 3: uses {{ customer }}" in r.out, r.out
    run(cli, cfg, "2026-11-01T10:00")
    run(cli, cfg, "2026-11-02T08:45")
    assert smtpd.messages == []  # held: nothing planned, nothing failed
    con = sqlite3.connect(tmp_path / "var" / "crm.sqlite")
    assert con.execute("SELECT COUNT(*) FROM sends WHERE kind = 'owner_digest'").fetchone()[0] == 0
    con.close()
    tpl.write_text("Subject: Morning {{ owner.email }}\n\n{{ digest.assigned | length }} new\n", encoding="utf-8")
    run(cli, cfg, "2026-11-02T09:00")
    assert sorted(m.rcpt_tos[0] for m in smtpd.messages) == ["alice@example.com", "bob@example.com",
                                                             "gone@example.com"]  # not suppressed here


def test_an_owner_suppressed_after_planning_is_not_mailed(tmp_path, smtpd, cli):
    cfg = workspace(tmp_path, smtpd)
    text = cfg.read_text(encoding="utf-8").replace('max_per_day = 0', 'max_per_day = 0\nsend_window = "09:00-18:00"')
    cfg.write_text(text, encoding="utf-8")
    run(cli, cfg, "2026-11-01T10:00")
    run(cli, cfg, "2026-11-02T08:45")  # planned and queued; the send window opens at 09:00
    assert smtpd.messages == []
    assert cli("suppress", "add", "bob@example.com", "--config", str(cfg)).code == 0
    run(cli, cfg, "2026-11-02T09:05")
    assert sorted(m.rcpt_tos[0] for m in smtpd.messages) == ["alice@example.com", "gone@example.com"]
    con = sqlite3.connect(tmp_path / "var" / "crm.sqlite")
    (status, error), = con.execute("SELECT status, error FROM sends WHERE customer_key = 'bob@example.com'")
    con.close()
    assert status == "skipped" and "suppression list" in error
