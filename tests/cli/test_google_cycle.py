"""A worker cycle on a Google sheet: one read and at most one write, rows found by key in that read.

Issue #3: "at most one read request and one batched write request per cycle,
whatever the number of rows". The worker writes back right after the sync's
read, reusing it; what fetch and send change reaches the sheet at the next
cycle. Requests are counted by the in-process fake of the Sheets v4 API,
which answers gspread's real HTTP requests.
"""

from __future__ import annotations

from datetime import UTC, datetime

from crm_automation.worker import Worker
from crm_automation.workspace import Clock, Workspace
from tests.fixtures.core import make_workspace

CAMPAIGN = '[[campaign]]\nid = "welcome"\ntrigger = "new"\ninclude_existing = true\ntemplate = "hello"\n'
HEADER = ["Email", "Name", "Stage", "Owner", "Notes"]


def _workspace(tmp_path, fake_sheets, rows: int, mailbox: str = ""):
    cfg = make_workspace(tmp_path / "ws", campaigns=CAMPAIGN, mailbox=mailbox)
    text = cfg.read_text(encoding="utf-8").replace('[sheet]\nsource = "csv"\npath = "customers.csv"\n',
                                                   fake_sheets.config_lines("KEY"))
    cfg.write_text(text, encoding="utf-8")
    grid = [HEADER, *([f"c{i}@example.com", f"Customer {i}", "lead", "owner@example.com", f"note {i}"]
                      for i in range(rows))]
    fake_sheets.create("KEY", {"客户": grid})
    return Workspace.load(cfg)


def _cycle(w: Worker, fake_sheets) -> dict[str, int]:
    fake_sheets.reset_log()
    w.run_once()
    return {op: fake_sheets.count(op) for op in ("values.get", "values.batchUpdate", "values.append")}


def _rows(fake_sheets) -> dict[str, dict[str, str]]:
    grid = fake_sheets.grid("KEY", "客户")
    head = [str(h) for h in grid[0]]
    return {r[0]: dict(zip(head, [str(v) for v in r], strict=False)) for r in grid[1:] if r and r[0]}


def test_each_cycle_is_one_read_and_at_most_one_write_whatever_the_rows(tmp_path, fake_sheets):
    ws = _workspace(tmp_path, fake_sheets, rows=300)
    w = Worker(ws, clock=Clock(datetime(2026, 11, 27, 2, 0, tzinfo=UTC)))
    try:
        # Cycle 1: read, write the status columns (new), then mail all 300 customers.
        assert _cycle(w, fake_sheets) == {"values.get": 1, "values.batchUpdate": 1, "values.append": 0}
        rows = _rows(fake_sheets)
        assert rows["c7@example.com"]["Email status"] == "ok"
        assert rows["c7@example.com"]["Last sent"] in ("", "None")  # the sends come after this cycle's write
        assert len(list((tmp_path / "ws" / "var" / "outbox").glob("*.eml"))) == 300

        # Meanwhile the team sorts the sheet (descending) and pastes a row in the middle.
        grid = fake_sheets.grid("KEY", "客户")
        body = sorted(grid[1:], key=lambda r: str(r[0]), reverse=True)
        body.insert(5, ["pasted@example.com", "Pasted", "lead", "owner@example.com", "pasted"])
        grid[1:] = body

        # Cycle 2: one read, one write: last-sent dates land on the right rows, found by key in that read.
        assert _cycle(w, fake_sheets) == {"values.get": 1, "values.batchUpdate": 1, "values.append": 0}
        rows = _rows(fake_sheets)
        assert rows["c7@example.com"]["Last sent"] == "2026-11-27 10:00"
        assert rows["c7@example.com"]["Notes"] == "note 7"  # the team's cells are untouched
        assert rows["pasted@example.com"]["Notes"] == "pasted"

        # Cycle 3: the pasted customer was mailed in cycle 2; its date is written now.
        assert _cycle(w, fake_sheets) == {"values.get": 1, "values.batchUpdate": 1, "values.append": 0}
        assert _rows(fake_sheets)["pasted@example.com"]["Last sent"] == "2026-11-27 10:00"
        # Cycle 4: nothing changed: one read, no write.
        assert _cycle(w, fake_sheets) == {"values.get": 1, "values.batchUpdate": 0, "values.append": 0}
    finally:
        w.close()


def test_a_failed_read_writes_nothing_and_the_next_cycle_catches_up(tmp_path, fake_sheets):
    ws = _workspace(tmp_path, fake_sheets, rows=3)
    w = Worker(ws, clock=Clock(datetime(2026, 11, 27, 2, 0, tzinfo=UTC)))
    w.session.sheet._max_retries = 0  # type: ignore[attr-defined]  # no backoff in a test
    try:
        fake_sheets.fail(503, times=1, op="values.get")
        results = {r.job: r for r in w.run_once()}
        assert results["sync"].error is not None and "503" in str(results["sync"].error)
        assert "not read in this cycle" in results["writeback"].stats["skipped"]
        assert fake_sheets.count("values.batchUpdate") == 0
        assert _cycle(w, fake_sheets) == {"values.get": 1, "values.batchUpdate": 1, "values.append": 0}
        assert _rows(fake_sheets)["c1@example.com"]["Email status"] == "ok"
    finally:
        w.close()


def test_new_senders_are_added_once_without_reading_the_worksheet_again(tmp_path, fake_sheets):
    ws = _workspace(tmp_path, fake_sheets, rows=3,
                    mailbox='source = "maildir"\npath = "inbox"\nnew_senders = "add_to_sheet"')
    inbox = tmp_path / "ws" / "inbox" / "new"
    (inbox / "1.a").write_bytes(b"From: Lead <lead@new.example.cn>\r\nTo: sales@example.com\r\nSubject: enquiry\r\n"
                                b"Message-ID: <lead-1@new.example.cn>\r\n\r\nPrice for 200 desks?\r\n")
    w = Worker(ws, clock=Clock(datetime(2026, 11, 27, 2, 0, tzinfo=UTC)))
    try:
        # The sync's read, then (in fetch) the header row and one append; the worksheet is not read again.
        assert _cycle(w, fake_sheets) == {"values.get": 2, "values.batchUpdate": 1, "values.append": 1}
        assert fake_sheets.count("spreadsheets.get") == 1  # first use: the worksheet titles, once per worker
        assert sum(r == "lead@new.example.cn" for r in _rows(fake_sheets)) == 1
        # Another message from the same lead before the next sync: not added twice, no request at all.
        (inbox / "2.b").write_bytes(b"From: lead@new.example.cn\r\nTo: sales@example.com\r\nSubject: again\r\n"
                                    b"Message-ID: <lead-2@new.example.cn>\r\n\r\nAny news?\r\n")
        fake_sheets.reset_log()
        st = w.fetch().stats
        assert st["messages"] >= 1 and st.get("added_to_sheet", 0) == 0
        assert fake_sheets.count() == 0
        # The next cycle syncs the new row in and mails it like everyone else.
        assert _cycle(w, fake_sheets)["values.append"] == 0
        assert sum(r == "lead@new.example.cn" for r in _rows(fake_sheets)) == 1
        assert "lead@new.example.cn" in w.store.customers()
    finally:
        w.close()
