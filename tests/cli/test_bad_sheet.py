"""A bad sheet or a broken mapping edit fails only the stage that needs it (issue #17, items 5 and 10).

``run --once`` with a renamed header: sync fails (exit 2), fetch still logs
the mail, sending is held, write-back waits; the fix resumes everything.
Each stage's outcome is read from ``--json``; what was sent from the outbox.
"""

from __future__ import annotations

import json
from pathlib import Path

from crm_automation.worker import Worker
from crm_automation.workspace import Workspace
from tests.fixtures.core import db_rows, make_workspace

WELCOME = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
PROMO = '[[campaign]]\nid = "promo"\ntemplate = "hello"\ntrigger = "at"\nat = "2026-01-01T10:00"\n'


def emls(ws: Path) -> list[Path]:
    return sorted((ws / "var" / "outbox").glob("*.eml"))


def stages(r) -> dict[str, dict]:
    return {s["job"]: s for s in json.loads(r.out)["stages"]}


def unsubscribe(ws: Path, sender: str, n: int = 1) -> None:
    (ws / "inbox" / "new" / f"{n}.unsub").write_bytes(
        f"From: {sender}\r\nTo: sales@example.com\r\nSubject: 退订\r\nMessage-ID: <unsub-{n}@example.com>\r\n"
        f"Date: Fri, 27 Nov 2026 09:00:00 +0800\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n退订\r\n".encode())


def rename_header(ws: Path, old: str, new: str) -> None:
    path = ws / "customers.csv"
    head, _, rest = path.read_text(encoding="utf-8").partition("\n")
    cells = [new if c == old else c for c in head.split(",")]
    path.write_text(",".join(cells) + "\n" + rest, encoding="utf-8")


def test_run_once_with_a_renamed_header_fails_sync_only_and_resumes_when_fixed(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=WELCOME)
    ws = cfg.parent
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    assert len(emls(ws)) == 3
    sheet_before = (ws / "customers.csv").read_text(encoding="utf-8")

    rename_header(ws, "Email", "E-mail")
    (ws / "mappings" / "campaigns.toml").write_text(WELCOME + PROMO, encoding="utf-8")  # due now
    unsubscribe(ws, "c0@example.com")
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 2, r.out + r.err
    st = stages(r)
    assert 'required column "Email" (field email) not found' in st["sync"]["error"]
    assert st["fetch"]["ok"] and st["fetch"]["stats"]["messages"] == 1
    assert "nothing was sent: the last sync failed" in st["send"]["error"]
    assert "required column" in st["send"]["error"]
    assert "the last sync failed" in st["writeback"]["stats"]["skipped"]
    assert "Traceback" not in r.err
    assert len(emls(ws)) == 3
    assert db_rows(ws / "var" / "crm.sqlite", "SELECT customer_key, kind FROM activities WHERE kind = 'unsubscribe'"
                   ) == [("c0@example.com", "unsubscribe")]
    assert db_rows(ws / "var" / "crm.sqlite", "SELECT COUNT(*) FROM customers WHERE present = 1") == [(3,)]
    assert (ws / "customers.csv").read_text(encoding="utf-8") == sheet_before.replace("Email", "E-mail", 1)

    # A `send` from another process (cron) knows the last sync failed too.
    r = cli("send", "--config", str(cfg), "--json")
    assert r.code == 2 and "the last sync failed" in stages(r)["send"]["error"] and len(emls(ws)) == 3

    rename_header(ws, "E-mail", "Email")
    r = cli("send", "--config", str(cfg))
    assert r.code == 2 and len(emls(ws)) == 3  # the sheet is fixed, but no sync has read it yet
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 0, r.out + r.err
    assert stages(r)["send"]["stats"]["sent"] == 2  # c1 and c2; c0 unsubscribed meanwhile
    assert len(emls(ws)) == 5


def test_a_missing_sheet_file_holds_sending_and_fetch_goes_on(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", campaigns=WELCOME)
    ws = cfg.parent
    assert cli("run", "--once", "--config", str(cfg)).code == 0
    (ws / "mappings" / "campaigns.toml").write_text(WELCOME + PROMO, encoding="utf-8")
    (ws / "customers.csv").rename(ws / "customers.moved")
    unsubscribe(ws, "c1@example.com")
    r = cli("run", "--once", "--config", str(cfg), "--json")
    assert r.code == 3, r.out + r.err
    st = stages(r)
    assert "customers.csv: cannot read the sheet file" in st["sync"]["error"]
    assert st["fetch"]["ok"] and st["fetch"]["stats"]["messages"] == 1
    assert "nothing was sent: the last sync failed" in st["send"]["error"]
    assert len(emls(ws)) == 3


def test_new_senders_are_not_added_to_a_sheet_whose_key_column_is_gone(tmp_path, cli):
    cfg = make_workspace(tmp_path / "ws", mailbox='source = "maildir"\npath = "inbox"\nnew_senders = "add_to_sheet"')
    ws = cfg.parent
    assert cli("sync", "--config", str(cfg)).code == 0
    rename_header(ws, "Email", "E-mail")
    broken = (ws / "customers.csv").read_text(encoding="utf-8")
    (ws / "inbox" / "new" / "1.lead").write_bytes(
        b"From: Lead <lead@new.example.cn>\r\nTo: sales@example.com\r\nSubject: enquiry\r\n"
        b"Message-ID: <lead-1@new.example.cn>\r\nDate: Fri, 27 Nov 2026 09:00:00 +0800\r\n\r\nHello\r\n")
    r = cli("run", "--once", "--config", str(cfg))
    assert r.code == 2, r.out + r.err
    assert "not adding 1 new sender(s) to the sheet: the last sync failed" in r.err
    assert (ws / "customers.csv").read_text(encoding="utf-8") == broken  # no row in the wrong columns
    assert db_rows(ws / "var" / "crm.sqlite", "SELECT COUNT(*) FROM activities WHERE kind = 'email_in'") == [(1,)]


def test_a_worker_uses_mapping_edits_from_the_next_cycle_and_a_broken_one_holds_only_what_needs_it(tmp_path):
    cfg = make_workspace(tmp_path / "ws", campaigns=WELCOME)
    ws = cfg.parent
    customers, campaigns = ws / "mappings" / "customers.toml", ws / "mappings" / "campaigns.toml"
    w = Worker(Workspace.load(cfg))
    try:
        assert all(r.ok for r in w.run_once())
        assert len(emls(ws)) == 3

        good = customers.read_text(encoding="utf-8")
        customers.write_text(good.replace("[fields]", "[fields]\nbad ="), encoding="utf-8")
        unsubscribe(ws, "c2@example.com")
        out = {r.job: r for r in w.run_once()}
        for job in ("sync", "send", "writeback"):
            assert out[job].error is not None and "customers.toml" in str(out[job].error), job
            assert out[job].error.exit_code == 2
        assert out["fetch"].ok and out["fetch"].stats["messages"] == 1

        customers.write_text(good, encoding="utf-8")
        campaigns.write_text(WELCOME + PROMO.replace('template = "hello"', 'template = "hello"\nbogus = 1'),
                             encoding="utf-8")
        out = {r.job: r for r in w.run_once()}
        assert out["sync"].ok and out["writeback"].ok
        assert "campaigns.toml" in str(out["send"].error) and "bogus" in str(out["send"].error)
        assert len(emls(ws)) == 3

        campaigns.write_text(WELCOME + PROMO, encoding="utf-8")
        out = {r.job: r for r in w.run_once()}
        assert all(r.ok for r in out.values()), {j: (r.error, r.problems) for j, r in out.items()}
        assert out["send"].stats["sent"] == 2  # the promo to c0 and c1; c2 unsubscribed while it was broken
    finally:
        w.close()
