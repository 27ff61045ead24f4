"""``report pipeline`` (issue #21 items 3-5) on a small real log, counted by hand.

The log is built by the product itself: a CSV sheet synced by ``run --once
--now`` at known times (stage moves edited into the sheet between runs), a
``change`` campaign that mails customers moving to 报价 (outbox transport),
customer mail dropped into the Maildir inbox, and the team's answers in its
Sent folder (``reply_out``). Then the numbers are the ones worked out in
each test's comments.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from crm_automation.app import pipeline, sales
from crm_automation.app.pipeline import StageOrder
from crm_automation.errors import ConfigError
from crm_automation.workspace import Workspace
from tests.fixtures.core import make_workspace
from tests.fixtures.postgres import database_value

SH = ZoneInfo("Asia/Shanghai")
NOW = "2026-11-20T10:00"  # a Friday
MAPPING = """key = "email"
[fields]
email = { column = "Email", type = "email", required = true }
name  = { column = "Name", required = true }
stage = { column = "Stage", type = "choice", choices = ["线索", "接洽", "报价", "签约"] }
owner = { column = "Owner" }
[writeback]
last_sent = "Last sent"
last_reply = "Last reply"
email_status = "Email status"
[stale_after_days]
"接洽" = 14
"报价" = 7
"""
QUOTE = '[[campaign]]\nid = "quote"\ntemplate = "hello"\ntrigger = "change"\nfield = "stage"\nto = "报价"\n'
A, B = "a@example.com", "b@example.com"
FIRST = {"c0": ("线索", A), "c1": ("线索", A), "c2": ("接洽", A), "c3": ("接洽", B), "c4": ("报价", B),
         "c5": ("报价", "B@Example.com")}  # c5's owner in other case: the same owner b


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SH)


def _sheet(ws: Path, stages: dict[str, tuple[str, str]]) -> None:
    with (ws / "customers.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["Email", "Name", "Stage", "Owner"])
        w.writeheader()
        w.writerows({"Email": f"{k}@example.com", "Name": k.upper(), "Stage": s, "Owner": o}
                    for k, (s, o) in stages.items())


def _mail(folder: Path, name: str, text: str) -> None:
    (folder / name).write_bytes(text.replace("\n", "\r\n").encode())


def _in(ws: Path, n: int, who: str, date: str, *, extra: str = "", subject: str = "Re: hello") -> None:
    _mail(ws / "inbox" / "new", f"{n}.msg", f"From: {who}\nTo: sales@example.com\nSubject: {subject}\n"
          f"Message-ID: <r{n}@example.com>\nDate: {date}\n{extra}\nYes please, send me the quote.\n")


def _ours(ws: Path, n: int, to: str, date: str, in_reply_to: str = "") -> None:
    irt = f"In-Reply-To: {in_reply_to}\n" if in_reply_to else ""
    _mail(ws / "inbox" / ".Sent" / "cur", f"{n}.sent:2,S", f"From: li@example.com\nTo: {to}\nSubject: Re: hello\n"
          f"Message-ID: <ours-{n}@example.com>\n{irt}Date: {date}\n\nHere it is.\n")


def build_pipeline_log(root: Path, cli, extra_config: str = "", database: str = "var/crm.sqlite") -> Path:
    """The fixture's month, run by the worker; returns the config. Times are Asia/Shanghai."""
    cfg = make_workspace(root, mapping=MAPPING, campaigns=QUOTE, extra_config=extra_config, database=database,
                         outbound='transport = "outbox"\noutbox = "var/outbox"\nsent_folder = "Sent"')
    for sub in ("new", "cur", "tmp"):
        (root / "inbox" / ".Sent" / sub).mkdir(parents=True)

    def run(now: str) -> None:
        r = cli("run", "--once", "--config", str(cfg), "--now", now)
        assert r.code == 0, r.out + r.err

    _sheet(root, FIRST)
    run("2026-11-02T10:00")  # Monday: six customers first seen
    stages = dict(FIRST)
    stages.update({"c0": ("接洽", A), "c1": ("报价", A), "c2": ("报价", A)})
    _sheet(root, stages)
    run("2026-11-10T10:00")  # c0 线索->接洽, c1 线索->报价, c2 接洽->报价; quote mails c1, c2
    _in(root, 3, "c3@example.com", "Wed, 11 Nov 2026 09:00:00 +0800")
    _in(root, 4, "c4@example.com", "Wed, 11 Nov 2026 11:00:00 +0800")
    _ours(root, 1, "c3@example.com", "Wed, 11 Nov 2026 15:00:00 +0800", "<r3@example.com>")  # names c3's mail
    run("2026-11-11T18:00")
    stages["c3"] = ("报价", B)
    _sheet(root, stages)
    _in(root, 90, "stranger@example.net", "Thu, 12 Nov 2026 08:00:00 +0800", subject="询价")  # no customer
    _in(root, 91, "c2@example.com", "Thu, 12 Nov 2026 08:30:00 +0800", extra="Auto-Submitted: auto-replied\n",
        subject="Automatic reply: hello")  # no reply, no contact
    run("2026-11-12T10:00")  # c3 接洽->报价; quote mails c3
    _in(root, 1, "c1@example.com", "Thu, 12 Nov 2026 17:00:00 +0800")
    _ours(root, 2, "c1@example.com", "Fri, 13 Nov 2026 10:00:00 +0800")  # names nothing: a later email of ours
    run("2026-11-13T11:00")
    _in(root, 5, "c5@example.com", "Thu, 19 Nov 2026 09:00:00 +0800")
    run("2026-11-19T12:00")
    return cfg


@pytest.fixture
def month(tmp_path, cli, log_location):
    cfg = build_pipeline_log(tmp_path / "ws", cli, database=database_value(log_location))
    return cfg, Workspace.load(cfg)


def test_cells_and_owners_match_the_hand_count(month):
    _, ws = month
    p = pipeline.pipeline(ws, at(NOW))
    assert p.stages == ("线索", "接洽", "报价", "签约") and p.stage_order is StageOrder.CHOICES
    # 接洽 x a: c0 (moved 11-10, no email: quiet 10 days of 14). 报价 x a: c1 (mailed 11-10, wrote 11-12,
    # answered 11-13: 7 days quiet, not more than 7) and c2 (mailed 11-10: 10 days, stale; its auto-reply is no
    # contact), both in 报价 since 11-10. 报价 x b: c3 (mailed 11-12: 8 days, stale; in 报价 since 11-12),
    # c4 (wrote 11-11: 9 days, stale) and c5 (wrote 11-19: 1 day), both in 报价 since first seen 11-02.
    assert [c.to_json() for c in p.cells] == [
        {"stage": "接洽", "owner": A, "customers": 1, "stale": 0, "median_days_in_stage": 10.0, "replies_30d": 0},
        {"stage": "报价", "owner": A, "customers": 2, "stale": 1, "median_days_in_stage": 10.0, "replies_30d": 1},
        {"stage": "报价", "owner": B, "customers": 3, "stale": 2, "median_days_in_stage": 18.0, "replies_30d": 3},
    ]
    # a: c1's Thursday 17:00 mail answered Friday 10:00 by a later email of ours: 1 + 1 working hours.
    # b: c3's Wednesday 09:00 mail answered 15:00 by a reply naming it (6 h); c4's and c5's not answered.
    assert [o.to_json() for o in p.owners] == [
        {"owner": A, "customers": 3, "stale": 1, "replies_30d": 1, "answered_30d": 1, "unanswered_30d": 0,
         "median_first_response_hours": 2.0},
        {"owner": B, "customers": 3, "stale": 2, "replies_30d": 3, "answered_30d": 1, "unanswered_30d": 2,
         "median_first_response_hours": 6.0},
    ]
    # the stale count is the foundation's rule: the same customers app.sales lists
    assert sorted(c.key for c in sales.stale(ws, at(NOW)).customers) == [
        "c2@example.com", "c3@example.com", "c4@example.com"]
    assert p.since is None and p.to_json()["moves"] is None and p.to_json()["funnel"] is None


def test_moves_and_funnel_since_a_date(month):
    _, ws = month
    p = pipeline.pipeline(ws, at(NOW), since=at("2026-11-01T00:00"))
    assert [m.to_json() for m in p.moves] == [
        {"from": "线索", "to": "接洽", "count": 1}, {"from": "线索", "to": "报价", "count": 1},
        {"from": "接洽", "to": "报价", "count": 2}]
    # everyone was first seen since 11-01 (added, in the stage they came in with) and some moved on
    assert [f.to_json() for f in p.funnel] == [
        {"stage": "线索", "entered": 2, "added": 2}, {"stage": "接洽", "entered": 3, "added": 2},
        {"stage": "报价", "entered": 5, "added": 2}, {"stage": "签约", "entered": 0, "added": 0}]
    later = pipeline.pipeline(ws, at(NOW), since=at("2026-11-11T00:00"))  # only c3's move is after it
    assert [m.to_json() for m in later.moves] == [{"from": "接洽", "to": "报价", "count": 1}]
    assert [(f.stage, f.entered, f.added) for f in later.funnel] == [
        ("线索", 0, 0), ("接洽", 0, 0), ("报价", 1, 0), ("签约", 0, 0)]
    assert later.cells == p.cells  # since changes only the moves
    with pytest.raises(ConfigError, match="after now"):
        pipeline.pipeline(ws, at(NOW), since=at(NOW) + timedelta(days=1))


def test_the_window_is_the_last_30_days(month):
    _, ws = month
    p = pipeline.pipeline(ws, at("2026-12-12T10:00"))  # c3's and c4's mail of 11-11 are more than 30 days ago
    owners = {o.owner: o for o in p.owners}
    assert (owners[B].replies, owners[B].answered, owners[B].unanswered) == (1, 0, 1)  # c5's only
    assert owners[A].replies == 1 and owners[A].median_first_response_hours == 2.0  # c1's of 11-12 still in


def test_cli_json_and_csv_are_the_use_case(month, cli):
    cfg, ws = month
    expected = pipeline.pipeline(ws, at(NOW), since=at("2026-11-01T00:00")).to_json()
    r = cli("report", "pipeline", "--json", "--since", "2026-11-01", "--config", str(cfg), "--now", NOW)
    assert r.code == 0, r.err
    assert json.loads(r.out) == expected
    r = cli("report", "pipeline", "--csv", "--config", str(cfg), "--now", NOW)
    assert r.code == 0, r.err
    assert list(csv.reader(r.out.splitlines())) == [
        ["stage", "owner", "customers", "stale", "median_days_in_stage", "replies_30d"],
        ["接洽", A, "1", "0", "10.0", "0"], ["报价", A, "2", "1", "10.0", "1"], ["报价", B, "3", "2", "18.0", "3"]]
    r = cli("report", "pipeline", "--config", str(cfg), "--now", NOW, "--since", "2026-11-01")
    assert r.code == 0 and "报价" in r.out and "funnel since 2026-11-01" in r.out and "Traceback" not in r.err


def test_cli_refuses_a_bad_since_without_a_traceback(month, cli):
    cfg, _ = month
    r = cli("report", "pipeline", "--since", "last week", "--config", str(cfg), "--now", NOW)
    assert r.code == 2 and "'last week' is not a date" in r.err and "Traceback" not in r.err
    r = cli("report", "pipeline", "--since", "2026-12-01", "--config", str(cfg), "--now", NOW)
    assert r.code == 2 and "is after now" in r.err and "Traceback" not in r.err
    r = cli("report", "--csv", "pipeline", "--config", str(cfg))
    assert r.code == 2 and "put --csv after" in r.err


def test_an_empty_log_and_a_text_stage_field(tmp_path, cli):
    """No log yet: no cells, no owners. A text stage field: stages in the order the log first shows them."""
    cfg = make_workspace(tmp_path / "ws")  # stage is a text field; three customers in "lead"
    ws = Workspace.load(cfg)
    p = pipeline.pipeline(ws, at(NOW), since=at("2026-11-01T00:00"))
    assert (p.cells, p.owners, p.moves, p.stages) == ((), (), (), ())
    r = cli("report", "pipeline", "--json", "--config", str(cfg), "--now", NOW)
    assert r.code == 0 and json.loads(r.out)["cells"] == []
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-02T10:00").code == 0
    rows = [{"Email": "c0@example.com", "Name": "C0", "Stage": "won", "Owner": "owner@example.com"},
            {"Email": "c1@example.com", "Name": "C1", "Stage": "lead", "Owner": "owner@example.com"},
            {"Email": "c2@example.com", "Name": "C2", "Stage": "", "Owner": ""}]
    with (tmp_path / "ws" / "customers.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert cli("run", "--once", "--config", str(cfg), "--now", "2026-11-05T10:00").code == 0
    p = pipeline.pipeline(ws, at(NOW), since=at("2026-11-01T00:00"))
    assert p.stage_order is StageOrder.LOG and p.stages == ("lead", "won")
    assert [(c.stage, c.owner, c.customers, c.median_days_in_stage) for c in p.cells] == [
        ("lead", "owner@example.com", 1, 18.0), ("won", "owner@example.com", 1, 15.0), (None, None, 1, 15.0)]
    assert [m.to_json() for m in p.moves] == [{"from": "lead", "to": "won", "count": 1},
                                              {"from": "lead", "to": None, "count": 1}]
