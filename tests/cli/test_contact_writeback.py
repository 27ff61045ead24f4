"""Issue #21: the optional write-back columns ``last_contact`` and ``days_quiet``, in a real .xlsx and .csv.

They show what the log says (``app.sales.contact``), are created when the
sheet lacks them, and are written only when their text changes.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pytest

from crm_automation.app import sales
from crm_automation.worker import Worker
from crm_automation.workspace import Clock, Workspace
from tests.fixtures.core import CSV_MAPPING, make_workspace

SH = ZoneInfo("Asia/Shanghai")
MAPPING = CSV_MAPPING + 'last_contact = "Last contact"\ndays_quiet = "Days quiet"\nlanguage = "en"\n'
CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\nwhere = ' \
           '{ stage = "lead" }\n'
ROWS = [{"Email": f"c{i}@example.com", "Name": f"Customer {i}", "Stage": stage, "Owner": "o@example.com"}
        for i, stage in enumerate(["lead", "lead", "won"])]
REPLY = (b"From: c0@example.com\r\nTo: sales@example.com\r\nSubject: Re: Hello\r\nMessage-ID: <r0@example.com>\r\n"
         b"Date: Wed, 04 Nov 2026 09:00:00 +0800\r\n\r\nInterested.\r\n")
AUTO = (b"From: c1@example.com\r\nTo: sales@example.com\r\nSubject: Out of office\r\nMessage-ID: <a1@example.com>\r\n"
        b"Auto-Submitted: auto-replied\r\nDate: Wed, 04 Nov 2026 09:00:00 +0800\r\n\r\nAway.\r\n")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SH)


def workspace(root: Path, fmt: str) -> Path:
    cfg = make_workspace(root, rows=ROWS, campaigns=CAMPAIGN, mapping=MAPPING)
    if fmt == "xlsx":
        wb = openpyxl.Workbook()
        sheet = wb.active
        sheet.title = "客户"
        sheet.append(list(ROWS[0]))
        for r in ROWS:
            sheet.append(list(r.values()))
        wb.save(root / "customers.xlsx")
        (root / "customers.csv").unlink()
        cfg.write_text(cfg.read_text(encoding="utf-8").replace(
            'source = "csv"\npath = "customers.csv"', 'source = "excel"\npath = "customers.xlsx"'), encoding="utf-8")
    return cfg


def sheet(root: Path) -> dict[str, tuple[str, str]]:
    """Each customer's (Last contact, Days quiet) as the file shows them."""
    xlsx = root / "customers.xlsx"
    if xlsx.exists():
        rows = list(openpyxl.load_workbook(xlsx)["客户"].iter_rows(values_only=True))
    else:
        import csv

        with (root / "customers.csv").open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    head = [str(h) for h in rows[0]]
    i, j = head.index("Last contact"), head.index("Days quiet")
    return {str(r[0]): ("" if r[i] is None else str(r[i]), "" if r[j] is None else str(r[j])) for r in rows[1:]}


def cycle(cfg: Path, now: str) -> dict[str, object]:
    """One cycle of the worker at ``now``; the write-back's stats."""
    w = Worker(Workspace.load(cfg), clock=Clock(at(now)))
    try:
        (wb,) = [r for r in w.run_once() if r.job == "writeback"]
        assert wb.error is None and not wb.problems, wb
        return wb.stats
    finally:
        w.close()


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_last_contact_and_days_quiet_match_the_log_and_are_written_only_when_changed(tmp_path, fmt):
    root = tmp_path / "ws"
    cfg = workspace(root, fmt)
    cycle(cfg, "2026-11-02T10:00")  # Monday: c0, c1 are mailed (contact); c2 ("won") is not
    (root / "inbox" / "new" / "1.reply").write_bytes(REPLY)
    (root / "inbox" / "new" / "2.auto").write_bytes(AUTO)
    stats = cycle(cfg, "2026-11-06T10:00")  # Friday: c0's Wednesday reply; c1's auto-reply is not contact
    assert stats["rows"] == 3
    assert sheet(root) == {
        "c0@example.com": ("2026-11-04 09:00", "2"),
        "c1@example.com": ("2026-11-02 10:00", "4"),
        "c2@example.com": ("", "4"),  # no contact: quiet since first seen
    }
    ws = Workspace.load(cfg)
    for key, (last, days) in sheet(root).items():  # the sheet says what the log says
        c = sales.contact(ws, key, at("2026-11-06T10:00")).customer
        assert last == (f"{c.last_contact.at.astimezone(SH):%Y-%m-%d %H:%M}" if c.last_contact else "")
        assert days == str(c.quiet.days)

    assert cycle(cfg, "2026-11-06T15:00")["cells"] == 0  # same day, nothing new: nothing written
    stats = cycle(cfg, "2026-11-07T09:00")  # the next day only the quiet days move
    assert stats["cells"] == 3
    assert {k: v[1] for k, v in sheet(root).items()} == {"c0@example.com": "3", "c1@example.com": "5",
                                                         "c2@example.com": "5"}


def test_without_the_columns_nothing_about_contact_is_written(tmp_path):
    root = tmp_path / "ws"
    cfg = make_workspace(root, rows=ROWS, campaigns=CAMPAIGN)
    cycle(cfg, "2026-11-02T10:00")
    head = (root / "customers.csv").read_text(encoding="utf-8").splitlines()[0]
    assert "Last contact" not in head and "Days quiet" not in head
