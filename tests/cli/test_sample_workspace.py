"""The sample workspace end to end: the README's first command, run twice."""

from __future__ import annotations

import email
import json
from email.header import decode_header, make_header

from tests.fixtures.core import db_rows, run_subprocess


def test_run_once_on_sample_workspace_then_again_adds_nothing(sample_ws):
    r = run_subprocess("run", "--once", "--config", str(sample_ws / "config.toml"), "--json",
                       "--now", "2026-11-27T10:00")
    # Two sample rows are wrong on purpose: a bad address rejects its row (SPEC §7: 1 = done, some items
    # failed); a stage not in the list only blanks the stage, and the row is kept (issue #11).
    assert r.code == 1, r.err
    assert "Traceback" not in r.err
    out = json.loads(r.out)
    stages = {s["job"]: s for s in out["stages"]}
    assert set(stages) == {"sync", "fetch", "send", "writeback"}
    assert stages["sync"]["stats"]["added"] == 20
    assert stages["sync"]["stats"]["rejected"] == 1
    assert any('"wang.xm@" ' in p or "'wang.xm@'" in p for p in stages["sync"]["problems"])
    assert [n.split(": ")[0] for n in stages["sync"]["notes"]] == ["kept with stage blank"]
    assert "'大客户' is not one of the choices" in stages["sync"]["notes"][0]
    assert stages["fetch"]["stats"]["messages"] == 6
    db = sample_ws / "var" / "crm.sqlite"
    outbox = sample_ws / "var" / "outbox"
    emls = sorted(outbox.glob("*.eml"))
    # welcome (include_existing) greets 潜在客户/意向, minus 黄丽-like suppressions; year-end goes to 成交.
    sent = db_rows(db, "SELECT campaign, customer_key FROM sends WHERE status = 'sent' ORDER BY campaign, customer_key")
    assert len(emls) == len(sent) > 0
    campaigns = {c for c, _ in sent}
    assert campaigns == {"welcome", "year-end"}
    assert ("year-end", "liu.yang@example.cn") in sent
    # Every .eml is a well-formed UTF-8 message with the headers SPEC §10 requires.
    for p in emls:
        msg = email.message_from_bytes(p.read_bytes())
        for h in ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
            assert msg[h], (p.name, h)
        assert "@example.com>" in msg["Message-ID"]
    subjects = [str(make_header(decode_header(email.message_from_bytes(p.read_bytes())["Subject"]))) for p in emls]
    assert any("欢迎了解" in s for s in subjects)
    # Inbound: the Chinese reply is logged as what the customer newly wrote, quote removed.
    body = db_rows(db, "SELECT body FROM activities WHERE message_id = '<sample-1@qq.example.cn>'")[0][0]
    assert "样品" in body and "原始邮件" not in body
    kinds = dict(db_rows(db, "SELECT message_id, kind FROM activities WHERE message_id LIKE '<sample-%'"))
    assert kinds["<sample-3@163.example.cn>"] == "auto_reply"
    assert kinds["<sample-4@126.example.cn>"] == "unsubscribe"
    assert db_rows(db, "SELECT reason FROM suppressions WHERE email = 'huang.li@example.cn'") == [("unsubscribed",)]
    unknown = db_rows(db, "SELECT customer_key FROM activities WHERE message_id = '<sample-5@newlead.example.cn>'")
    assert unknown == [(None,)]

    # Replies fetched in the same pass, before the send, are not replies to it (times are whole seconds).
    rep = json.loads(run_subprocess("report", "--json", "--config", str(sample_ws / "config.toml")).out)
    assert {r["campaign"]: r["replied"] for r in rep["campaigns"]} == {"welcome": 0, "year-end": 0}

    counts = db_rows(db, "SELECT (SELECT COUNT(*) FROM activities), (SELECT COUNT(*) FROM sends)")[0]
    r2 = run_subprocess("run", "--once", "--config", str(sample_ws / "config.toml"), "--json",
                        "--now", "2026-11-27T10:05")
    assert r2.code == 1
    assert db_rows(db, "SELECT (SELECT COUNT(*) FROM activities), (SELECT COUNT(*) FROM sends)")[0] == counts
    assert sorted(outbox.glob("*.eml")) == emls
    stages2 = {s["job"]: s for s in json.loads(r2.out)["stages"]}
    assert stages2["sync"]["stats"]["added"] == 0 and stages2["send"]["stats"]["sent"] == 0


def test_follow_up_goes_out_after_three_days_but_not_to_who_replied(sample_ws):
    cfg = str(sample_ws / "config.toml")
    assert run_subprocess("run", "--once", "--config", cfg, "--now", "2026-11-27T10:00").code == 1
    db = sample_ws / "var" / "crm.sqlite"
    # 张伟's reply is older than the welcome mail, so it does not stop his sequence; a new reply does.
    new = sample_ws / "examples" / "inbox" / "new" / "9999999999.reply.sample"
    new.write_bytes(b"From: Zhang Wei <zhang.wei@example.cn>\r\nTo: sales@example.com\r\nSubject: Re: hi\r\n"
                    b"Message-ID: <later-reply@example.cn>\r\nDate: Sat, 28 Nov 2026 09:00:00 +0800\r\n\r\n"
                    b"Thanks, please call me.\r\n")
    r = run_subprocess("run", "--once", "--config", cfg, "--json", "--now", "2026-11-30T10:30")
    assert r.code == 1
    steps = dict(db_rows(db, "SELECT customer_key, status FROM sends WHERE campaign = 'welcome' AND step = 1"))
    assert steps["zhang.wei@example.cn"] == "skipped"
    assert steps["chen.jing@example.cn"] == "sent"
    assert "huang.li@example.cn" not in steps  # 流失: never in the welcome segment
