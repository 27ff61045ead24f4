"""Write-back in the team's language into a real .xlsx and .csv, and reading those words back (issue #12).

The log stays the source of truth: the words in the sheet are only shown,
never read into the log, and a sheet that already shows them is not written.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import openpyxl
import pytest

from crm_automation.worker import StageResult, Worker
from crm_automation.workspace import Clock, Workspace
from tests.fixtures.core import REPO, db_rows, make_workspace

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai
CAMPAIGN = '[[campaign]]\nid = "hello"\ntemplate = "hello"\ntrigger = "new"\ninclude_existing = true\n'
ROWS = [{"Email": "c0@example.com", "Name": "Customer 0", "Stage": "lead", "Owner": ""},
        {"Email": "c1@example.com", "Name": "Customer 1", "Stage": "lead", "Owner": ""},
        {"Email": "bob.unknown@example.net", "Name": "Bob", "Stage": "lead", "Owner": ""}]
REPLY = (b"From: Customer 0 <c0@example.com>\r\nTo: sales@example.com\r\nSubject: Re: hello\r\n"
         b"Message-ID: <reply-c0@example.com>\r\nDate: Fri, 27 Nov 2026 10:30:00 +0800\r\n\r\nYes please.\r\n")
UNSUBSCRIBE = (b"From: Customer 1 <c1@example.com>\r\nTo: sales@example.com\r\nSubject: =?UTF-8?B?6YCA6K6i?=\r\n"
               b"Message-ID: <unsub-c1@example.com>\r\nDate: Fri, 27 Nov 2026 09:10:00 +0800\r\n\r\n\xe9\x80\x80\xe8\xae\xa2\r\n")

# What each customer's row shows after :func:`cycle`: c0 was mailed and replied, c1 unsubscribed, bob bounced.
EXPECTED = {
    "zh-CN": {"c0@example.com": ("2026年11月27日 10:00", "2026年11月27日 10:30", "正常"),
              "c1@example.com": ("", "", "已退订"),
              "bob.unknown@example.net": ("", "", "退信")},
    "en": {"c0@example.com": ("2026-11-27 10:00", "2026-11-27 10:30", "ok"),
           "c1@example.com": ("", "", "unsubscribed"),
           "bob.unknown@example.net": ("", "", "bounced")},
}
STATUS_COLUMNS = ("Last sent", "Last reply", "Email status")


def workspace(root: Path, fmt: str, *, language: str | None, mapping_language: str | None = None) -> Path:
    """A workspace on a .csv or a real .xlsx, with an unsubscribe and a bounce in the inbox."""
    mapping = None
    if mapping_language:
        from tests.fixtures.core import CSV_MAPPING

        mapping = CSV_MAPPING + f'language = "{mapping_language}"\n'
    cfg = make_workspace(root, rows=ROWS, campaigns=CAMPAIGN, **({"mapping": mapping} if mapping else {}))
    text = cfg.read_text(encoding="utf-8")
    if language:
        text = text.replace('timezone = "Asia/Shanghai"\n', f'timezone = "Asia/Shanghai"\nlanguage = "{language}"\n')
    if fmt == "xlsx":
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.title = "客户"
        ws.append([*ROWS[0], "Note"])
        for r in ROWS:
            ws.append([*r.values(), "=1+1"])
        wb.save(root / "customers.xlsx")
        (root / "customers.csv").unlink()
        text = text.replace('source = "csv"\npath = "customers.csv"', 'source = "excel"\npath = "customers.xlsx"')
    cfg.write_text(text, encoding="utf-8")
    new = root / "inbox" / "new"
    (new / "2.unsub").write_bytes(UNSUBSCRIBE)
    (new / "3.bounce").write_bytes((REPO / "tests" / "data" / "eml" / "bounce" / "postfix_permanent.eml").read_bytes())
    return cfg


def sheet_rows(root: Path) -> dict[str, dict[str, str]]:
    """The sheet as text, by e-mail."""
    xlsx = root / "customers.xlsx"
    if xlsx.exists():
        ws = openpyxl.load_workbook(xlsx)["客户"]
        values = list(ws.iter_rows(values_only=True))
        headers = [str(h) for h in values[0]]
        return {r[0]: {h: "" if v is None else str(v) for h, v in zip(headers, r, strict=True)} for r in values[1:]}
    with (root / "customers.csv").open(encoding="utf-8-sig", newline="") as f:
        return {r["Email"]: r for r in csv.DictReader(f)}


def shown(root: Path) -> dict[str, tuple[str, ...]]:
    return {k: tuple(r.get(c, "") for c in STATUS_COLUMNS) for k, r in sheet_rows(root).items()}


def worker(cfg: Path) -> Worker:
    return Worker(Workspace.load(cfg), clock=Clock(NOW))


def cycle(cfg: Path) -> StageResult:
    """One cycle (c1 unsubscribes, bob bounces, c0 is mailed), then c0's reply arrives; the last write-back."""
    w = worker(cfg)
    try:
        w.run_once()
        (cfg.parent / "inbox" / "new" / "4.reply").write_bytes(REPLY)
        w.fetch()
        return w.writeback()
    finally:
        w.close()


def edit_cell(root: Path, key: str, column: str, value: str) -> None:
    """A colleague edits one cell and saves the file."""
    xlsx = root / "customers.xlsx"
    if xlsx.exists():
        wb = openpyxl.load_workbook(xlsx)
        ws = wb["客户"]
        headers = [c.value for c in ws[1]]
        for row in ws.iter_rows(min_row=2):
            if row[0].value == key:
                row[headers.index(column)].value = value
        wb.save(xlsx)
        return
    path = root / "customers.csv"
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["Email"] == key:
            r[column] = value
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
@pytest.mark.parametrize("language", ["zh-CN", "en"])
def test_writeback_writes_the_teams_words_and_dates(tmp_path, fmt, language):
    root = tmp_path / "ws"
    cfg = workspace(root, fmt, language=language)
    assert cycle(cfg).stats["cells"] == 1  # c0's reply; the rest went in with the cycle's write-back
    assert shown(root) == EXPECTED[language]
    # The log keeps its own words, whatever the sheet shows.
    status = dict(db_rows(root / "var" / "crm.sqlite", "SELECT key, email_status FROM customers"))
    assert status == {"c0@example.com": "ok", "c1@example.com": "unsubscribed", "bob.unknown@example.net": "bounced"}
    if fmt == "xlsx":
        assert sheet_rows(root)["c0@example.com"]["Note"] == "=1+1"  # other cells untouched


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_writeback_language_in_the_mapping_overrides_the_workspace(tmp_path, fmt):
    root = tmp_path / "ws"
    cfg = workspace(root, fmt, language="en", mapping_language="zh-CN")
    cycle(cfg)
    assert shown(root) == EXPECTED["zh-CN"]


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_a_sheet_showing_chinese_words_is_read_back_without_confusing_the_worker(tmp_path, fmt):
    root = tmp_path / "ws"
    cfg = workspace(root, fmt, language="zh-CN")
    cycle(cfg)
    assert shown(root)["bob.unknown@example.net"][2] == "退信"
    # A colleague renames a customer, so the next sync reads the whole sheet, 退信 and 已退订 included.
    edit_cell(root, "c0@example.com", "Name", "张伟")
    w = worker(cfg)
    try:
        st = w.sync().stats
        assert st["changed"] == 1 and st["rejected"] == 0  # the name; the status columns are not fields
        wb = w.writeback().stats
        assert wb["cells"] == 0 and wb["note"] == "the sheet already shows these values; nothing to write"
    finally:
        w.close()
    db = root / "var" / "crm.sqlite"
    assert dict(db_rows(db, "SELECT key, email_status FROM customers")) == {
        "c0@example.com": "ok", "c1@example.com": "unsubscribed", "bob.unknown@example.net": "bounced"}
    assert shown(root) == EXPECTED["zh-CN"]


@pytest.mark.parametrize("fmt", ["xlsx", "csv"])
def test_a_status_typed_by_hand_changes_nothing_in_the_log_and_is_put_right(tmp_path, fmt):
    root = tmp_path / "ws"
    cfg = workspace(root, fmt, language="zh-CN")
    cycle(cfg)
    edit_cell(root, "c0@example.com", "Email status", "退信")  # not what the log says
    db = root / "var" / "crm.sqlite"
    w = worker(cfg)
    try:
        w.sync()
        assert db_rows(db, "SELECT email_status FROM customers WHERE key = 'c0@example.com'") == [("ok",)]
        assert db_rows(db, "SELECT COUNT(*) FROM suppressions WHERE email = 'c0@example.com'") == [(0,)]
        assert w.writeback().stats["cells"] == 1  # the log's word, 正常, goes back into that one cell
    finally:
        w.close()
    assert shown(root) == EXPECTED["zh-CN"]


def test_switching_language_rewrites_the_words_once(tmp_path):
    root = tmp_path / "ws"
    cfg = workspace(root, "csv", language="en")
    cycle(cfg)
    assert shown(root) == EXPECTED["en"]
    cfg.write_text(cfg.read_text(encoding="utf-8").replace('language = "en"', 'language = "zh-CN"'), encoding="utf-8")
    w = worker(cfg)
    try:
        assert w.writeback().stats["cells"] == 5  # three statuses and c0's two dates
        assert w.writeback().stats["cells"] == 0
    finally:
        w.close()
    assert shown(root) == EXPECTED["zh-CN"]
