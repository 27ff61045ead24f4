"""One behavioural suite for every SheetSource: CSV and Excel files, Google Sheets through the fake API.

Each backend harness can create a sheet, let a "user" edit it between the
worker's read and write (sort, insert rows and columns, save), and show the
cells as stored, with formula cells marked by :class:`F`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from crm_automation.errors import ConfigError, ServiceError
from crm_automation.sheets.csv import CsvSource
from crm_automation.sheets.excel import ExcelSource
from tests.fixtures.sheets_api import Formula


class F(str):
    """A formula cell in a harness grid (as opposed to text that merely starts with '=')."""

    __slots__ = ()


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


class CsvHarness:
    name = "csv"
    checks_version = True

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "customers.csv"

    def make(self, rows: list[list[Any]]) -> CsvSource:
        self._save(rows)
        return CsvSource(self.path)

    def _save(self, rows: list[list[Any]]) -> None:
        with self.path.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f).writerows([["" if v is None else v for v in r] for r in rows])

    def cells(self) -> list[list[Any]]:
        with self.path.open(encoding="utf-8", newline="") as f:
            return [[v for v in r] for r in csv.reader(f)]

    def edit(self, fn) -> None:
        grid = self.cells()
        fn(grid)
        self._save(grid)
        _bump_mtime(self.path)

    def stored_text(self, value: str) -> str:
        return "'" + value if value[:1] in "=+-@" else value

    def mtime(self) -> int:
        return self.path.stat().st_mtime_ns


class ExcelHarness:
    name = "excel"
    checks_version = True

    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "customers.xlsx"

    def make(self, rows: list[list[Any]]) -> ExcelSource:
        wb = openpyxl.Workbook()
        ws = wb.active
        ws.title = "客户"
        self._fill(ws, rows)
        other = wb.create_sheet("备注")
        other["A1"] = "keep me"
        other["B2"] = "=1+2"
        ws["A1"].font = openpyxl.styles.Font(bold=True)
        wb.save(self.path)
        return ExcelSource(self.path, worksheet="客户")

    @staticmethod
    def _fill(ws, rows: list[list[Any]]) -> None:
        for r, row in enumerate(rows, start=1):
            for c, v in enumerate(row, start=1):
                if v is None or v == "":
                    continue
                cell = ws.cell(row=r, column=c, value=v)
                if isinstance(v, str) and not isinstance(v, F):
                    cell.data_type = "s"

    def cells(self) -> list[list[Any]]:
        ws = openpyxl.load_workbook(self.path)["客户"]
        out = []
        for row in ws.iter_rows():
            out.append([F(c.value) if c.data_type == "f" else ("" if c.value is None else c.value) for c in row])
        return out

    def edit(self, fn) -> None:
        wb = openpyxl.load_workbook(self.path)
        ws = wb["客户"]
        grid = [[F(c.value) if c.data_type == "f" else c.value for c in row] for row in ws.iter_rows()]
        fn(grid)
        ws.delete_rows(1, ws.max_row)
        self._fill(ws, grid)
        wb.save(self.path)
        _bump_mtime(self.path)

    def stored_text(self, value: str) -> str:
        return value

    def mtime(self) -> int:
        return self.path.stat().st_mtime_ns


class GoogleHarness:
    name = "google"
    checks_version = False

    def __init__(self, fake) -> None:
        self.fake = fake

    def make(self, rows: list[list[Any]]):
        conv = [[Formula(v, value="") if isinstance(v, F) else v for v in r] for r in rows]
        self.fake.create("SHEETKEY", {"客户": conv, "备注": [["keep me"]]})
        return self.fake.source("SHEETKEY", worksheet="客户")

    def cells(self) -> list[list[Any]]:
        return [[F(v.text) if isinstance(v, Formula) else v for v in r] for r in self.fake.grid("SHEETKEY", "客户")]

    def edit(self, fn) -> None:
        grid = self.cells()
        fn(grid)
        self.fake.grid("SHEETKEY", "客户")[:] = [[Formula(v) if isinstance(v, F) else v for v in r] for r in grid]

    def stored_text(self, value: str) -> str:
        return value

    def mtime(self) -> int:
        return self.fake.count("values.batchUpdate") + self.fake.count("values.append")


@pytest.fixture(params=["csv", "excel", "google"])
def backend(request, tmp_path):
    if request.param == "csv":
        return CsvHarness(tmp_path)
    if request.param == "excel":
        return ExcelHarness(tmp_path)
    return GoogleHarness(request.getfixturevalue("fake_sheets"))


@pytest.fixture(params=["csv", "excel"])
def file_backend(request, tmp_path):
    """The sources kept in a file (a digest, a rename that must not overwrite a save)."""
    return CsvHarness(tmp_path) if request.param == "csv" else ExcelHarness(tmp_path)


@pytest.fixture(params=["excel", "google"])
def tabbed_backend(request, tmp_path):
    """The sources with worksheets."""
    return ExcelHarness(tmp_path) if request.param == "excel" else GoogleHarness(request.getfixturevalue("fake_sheets"))


HEADER = ["邮箱", "客户名称", "阶段", "合计"]
ROWS = [
    HEADER,
    ["a@x.com", "阿里", "意向", F("=LEN(B2)")],
    ["b@x.com", "百度", "报价", F("=LEN(B3)")],
    [],
    ["C@X.com ", "腾讯", "", F("=LEN(B5)")],
]


def _text(v: Any) -> str:
    return "" if v is None else str(v)


def _row_of(grid: list[list[Any]], key: str) -> list[Any]:
    matches = [r for r in grid if r and _text(r[0]).strip().lower() == key]
    assert len(matches) == 1, f"{key} found {len(matches)} times in {grid}"
    return matches[0]


def _col(grid: list[list[Any]], name: str) -> int:
    return [_text(h) for h in grid[0]].index(name)


def test_read_skips_empty_rows_and_keeps_sheet_row_numbers(backend):
    src = backend.make(ROWS)
    data = src.read()
    assert data.headers == ("邮箱", "客户名称", "阶段", "合计")
    assert [r.row for r in data.rows] == [2, 3, 5]
    assert data.rows[0].values["邮箱"] == "a@x.com"
    assert data.rows[1].values["客户名称"] == "百度"
    assert data.rows[2].values["阶段"] is None  # an empty cell is None in every format
    assert data.source == src.name


def test_write_back_finds_rows_by_key_after_sort_insert_and_new_column(backend):
    src = backend.make(ROWS)
    data = src.read()

    order = []

    def user(grid):
        body = [r for r in grid[1:] if any(_text(v) for v in r)]
        body.sort(key=lambda r: _text(r[0]).strip().lower(), reverse=True)  # sorted by email, descending
        body.insert(1, ["new@x.com", "新客户", "潜在客户", ""])  # a row pasted in the middle
        grid[:] = [grid[0], *body]
        order.extend(_text(r[1]) for r in body)
        for r in grid:  # a column inserted at the front
            r.insert(0, "备注" if r is grid[0] else "x")

    backend.edit(user)
    version = src.read().version if backend.checks_version else data.version
    res = src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}, "c@x.com": {"邮件状态": "bounced"}},
                         version=version)
    assert res.postponed is None
    assert res.cells == 2
    assert res.added_columns == ("邮件状态",)
    grid = backend.cells()
    st = _col(grid, "邮件状态")
    assert st == 5  # appended right of the used columns
    assert _row_of([r[1:] for r in grid], "a@x.com")[st - 1] == "ok"
    assert _row_of([r[1:] for r in grid], "c@x.com")[st - 1] == "bounced"
    new = _row_of([r[1:] for r in grid], "new@x.com")
    assert _text(new[st - 1] if len(new) >= st else "") == ""
    assert [_text(r[2]) for r in grid[1:]] == order == ["腾讯", "新客户", "百度", "阿里"]  # the user's order is kept
    assert [_text(r[0]) for r in grid[1:]] == ["x", "x", "x", "x"]


def test_formulas_preserved_and_values_are_never_formulas(backend):
    src = backend.make(ROWS)
    data = src.read()
    values = {"a@x.com": {"最近回复": "=HYPERLINK(\"http://evil\")"}, "b@x.com": {"最近回复": "+8613800138000"},
              "c@x.com": {"最近回复": "@SUM(1)"}}
    res = src.write_back("邮箱", values, version=data.version)
    assert res.cells == 3
    grid = backend.cells()
    total, reply = _col(grid, "合计"), _col(grid, "最近回复")
    for key, want in [("a@x.com", "=HYPERLINK(\"http://evil\")"), ("b@x.com", "+8613800138000"), ("c@x.com", "@SUM(1)")]:
        row = _row_of(grid, key)
        assert not isinstance(row[reply], F), f"{want} became a formula"
        assert row[reply] == backend.stored_text(want)
        if backend.name != "csv":
            assert isinstance(row[total], F), "a user's formula cell was lost"
    if backend.name == "csv":
        assert _row_of(grid, "a@x.com")[total] == "=LEN(B2)"  # the user's text untouched
    again = src.read()
    assert again.rows[0].values["最近回复"] == values["a@x.com"]["最近回复"]  # round-trips in every format


def test_unchanged_values_do_not_rewrite_the_sheet(backend):
    src = backend.make(ROWS)
    data = src.read()
    res = src.write_back("邮箱", {"a@x.com": {"最近发送": "2026-11-24 10:00"}, "b@x.com": {"最近发送": "-x"}},
                         version=data.version)
    assert res.cells == 2
    before = backend.mtime()
    data = src.read()
    res = src.write_back("邮箱", {"a@x.com": {"最近发送": "2026-11-24 10:00"}, "b@x.com": {"最近发送": "-x"}},
                         version=data.version)
    assert (res.cells, res.added_columns, res.postponed, res.missing_keys) == (0, (), None, ())
    assert res.version == data.version
    assert backend.mtime() == before


def test_unknown_keys_are_reported_not_written(backend):
    src = backend.make(ROWS)
    data = src.read()
    res = src.write_back("邮箱", {"ghost@x.com": {"邮件状态": "ok"}, "A@X.COM": {"邮件状态": "ok"}},
                         version=data.version)
    assert res.missing_keys == ("ghost@x.com",)
    assert res.cells == 1
    assert _row_of(backend.cells(), "a@x.com")[_col(backend.cells(), "邮件状态")] == "ok"


def test_concurrent_edit_between_read_and_write(backend):
    src = backend.make(ROWS)
    data = src.read()
    backend.edit(lambda g: g[1].__setitem__(1, "阿里巴巴"))  # someone saves meanwhile
    res = src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}}, version=data.version)
    grid = backend.cells()
    assert _row_of(grid, "a@x.com")[1] == "阿里巴巴"  # their edit survives
    if backend.checks_version:
        assert res.postponed
        assert "changed since it was read" in res.postponed
        assert "邮件状态" not in [_text(h) for h in grid[0]]
        fresh = src.read()  # the next cycle
        res = src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}}, version=fresh.version)
    assert res.postponed is None
    grid = backend.cells()
    assert _row_of(grid, "a@x.com")[_col(grid, "邮件状态")] == "ok"
    assert _row_of(grid, "a@x.com")[1] == "阿里巴巴"


def test_append_rows_after_last_row_with_new_column(backend):
    src = backend.make(ROWS)
    n = src.append_rows([{"邮箱": "new@x.com", "客户名称": "=cmd", "来源": "邮件"}])
    assert n == 1
    data = src.read()
    assert [r.row for r in data.rows] == [2, 3, 5, 6]
    last = data.rows[-1].values
    assert last["邮箱"] == "new@x.com"
    assert last["来源"] == "邮件"
    assert last["客户名称"] == "=cmd"
    assert "来源" in data.headers
    grid = backend.cells()
    assert not isinstance(_row_of(grid, "new@x.com")[1], F)
    assert _row_of(grid, "new@x.com")[1] == backend.stored_text("=cmd")


def test_missing_key_column_postpones(backend):
    src = backend.make(ROWS)
    data = src.read()
    res = src.write_back("Email", {"a@x.com": {"邮件状态": "ok"}}, version=data.version)
    assert res.postponed
    assert '"Email" not found' in res.postponed
    assert "邮箱" in res.postponed


def test_duplicate_and_blank_headers_first_column_wins(backend):
    src = backend.make([["邮箱", "", "邮箱", "姓名"], ["a@x.com", "ignored", "other", "A"]])
    data = src.read()
    assert data.headers == ("邮箱", "姓名")
    assert data.rows[0].values == {"邮箱": "a@x.com", "姓名": "A"}


def test_duplicate_headers_are_kept_for_the_mapping_to_report(backend):
    # Issue #9: the later columns are still ignored, but every source says which names head several columns.
    from crm_automation.sheets.base import DuplicateHeader

    src = backend.make([["邮箱", "姓名", "", "邮箱", "备注", " 姓名 ", "邮箱"], ["a@x.com", "A", "", "b@x.com", "x", "B", "c"]])
    data = src.read()
    assert data.duplicate_headers == (DuplicateHeader("邮箱", (0, 3, 6)), DuplicateHeader("姓名", (1, 5)))
    assert [d.letters for d in data.duplicate_headers] == [("A", "D", "G"), ("B", "F")]
    assert data.rows[0].values == {"邮箱": "a@x.com", "姓名": "A", "备注": "x"}
    assert backend.make([["邮箱", "姓名"], ["a@x.com", "A"]]).read().duplicate_headers == ()


def test_missing_sheet_is_a_service_error(backend, tmp_path):
    if backend.name == "google":
        src = backend.fake.source("NO-SUCH-KEY")
        with pytest.raises(ServiceError, match="404") as e:
            src.read()
        assert "crm-bot@test-project.iam.gserviceaccount.com" in (e.value.hint or "")
    else:
        cls = CsvSource if backend.name == "csv" else ExcelSource
        missing = tmp_path / f"nope.{'csv' if backend.name == 'csv' else 'xlsx'}"
        with pytest.raises(ServiceError, match="not found") as e:
            cls(missing).read()
        assert str(missing) in str(e.value)


def test_wrong_worksheet_lists_the_worksheets(tabbed_backend):
    backend = tabbed_backend
    backend.make(ROWS)
    src = (ExcelSource(backend.path, worksheet="Customers") if backend.name == "excel"
           else backend.fake.source("SHEETKEY", worksheet="Customers"))
    with pytest.raises(ConfigError, match='"Customers" not found') as e:
        src.read()
    assert '"客户"' in str(e.value)
    assert '"备注"' in str(e.value)


# ---------------------------------------------------------------- Excel specifics


def _members(path: Path) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _add_member(path: Path, name: str, data: bytes) -> None:
    import zipfile

    with zipfile.ZipFile(path, "a") as z:
        z.writestr(name, data)


def test_excel_write_back_copies_every_other_part_unchanged(tmp_path):
    h = ExcelHarness(tmp_path)
    src = h.make(ROWS)
    _add_member(h.path, "xl/media/image1.png", b"\x89PNG not really")  # stands in for charts and images
    before = _members(h.path)
    res = src.write_back("邮箱", {"b@x.com": {"邮件状态": "=evil()"}}, version=src.read().version)
    assert res.cells == 1
    after = _members(h.path)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"xl/worksheets/sheet1.xml"}
    assert list(after) == list(before)
    wb = openpyxl.load_workbook(h.path)
    assert wb["客户"]["A1"].font.b  # formatting kept
    assert wb["备注"]["B2"].value == "=1+2"
    cell = wb["客户"]["E3"]
    assert (cell.value, cell.data_type) == ("=evil()", "s")
    assert list(tmp_path.iterdir()) == [h.path]  # no temporary files left behind


def test_excel_append_rows_patches_in_place(tmp_path):
    h = ExcelHarness(tmp_path)
    src = h.make(ROWS)
    _add_member(h.path, "xl/media/image1.png", b"img")
    assert src.append_rows([{"邮箱": "n1@x.com"}, {"邮箱": "n2@x.com", "新列": "+1"}]) == 2
    assert _members(h.path)["xl/media/image1.png"] == b"img"
    rows = src.read().rows
    assert [(r.row, r.values["邮箱"], r.values["新列"]) for r in rows[-2:]] == [(6, "n1@x.com", None),
                                                                                (7, "n2@x.com", "+1")]


def test_excel_formula_in_a_target_cell_falls_back_to_openpyxl(tmp_path):
    h = ExcelHarness(tmp_path)
    src = h.make([["邮箱", "邮件状态", "合计"], ["a@x.com", F("=1+1"), F("=LEN(A2)")]])
    res = src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}}, version=src.read().version)
    assert res.cells == 1
    grid = h.cells()
    assert grid[1][1] == "ok"
    assert grid[1][2] == F("=LEN(A2)")
    assert isinstance(grid[1][2], F)


@pytest.mark.parametrize("owner", ["~$customers.xlsx", "~$stomers.xlsx"])
def test_excel_open_in_excel_postpones(tmp_path, owner):
    h = ExcelHarness(tmp_path)
    src = h.make(ROWS)
    lock = tmp_path / owner
    lock.write_bytes(b"someone")
    before = h.path.read_bytes()
    res = src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}}, version=src.read().version)
    assert res.postponed
    assert "open in Excel" in res.postponed
    assert h.path.read_bytes() == before
    lock.unlink()
    assert src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}}, version=src.read().version).cells == 1


def test_excel_not_a_workbook_is_a_service_error(tmp_path):
    bad = tmp_path / "customers.xlsx"
    bad.write_bytes(b"\x00\x01 damaged, not a zip")  # perhaps still being copied: retried at the next pass
    # Text in an .xlsx is named as text, a ConfigError, since issue #17 (tests/unit/test_sheet_file_kinds.py).
    with pytest.raises(ServiceError, match="not a readable Excel workbook") as e:
        ExcelSource(bad).read()
    assert str(bad) in str(e.value)


def test_consecutive_writes_with_the_returned_version_are_not_postponed(backend):
    src = backend.make(ROWS)
    version = src.read().version
    for i, key in enumerate(["a@x.com", "b@x.com", "a@x.com"]):
        res = src.write_back("邮箱", {key: {"最近发送": f"2026-11-2{i}"}}, version=version)
        assert res.postponed is None
        assert res.cells == 1
        if backend.checks_version:
            assert res.version == src.read().version  # what the file is now, after our own write
        version = res.version
    backend.edit(lambda g: g[1].__setitem__(1, "改"))
    res = src.write_back("邮箱", {"b@x.com": {"最近发送": "x"}}, version=version)
    assert (res.postponed is not None) == backend.checks_version


def test_file_fingerprint_ignores_saves_that_change_nothing(file_backend):
    backend = file_backend
    src = backend.make(ROWS)
    first = src.fingerprint()
    _bump_mtime(backend.path)  # saved again, same bytes
    assert src.fingerprint() == first
    src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}}, version=src.read().version)
    assert src.fingerprint() != first


EXCEL_STYLE_SHEET = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\r\n'
    b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    b'xmlns:x14ac="http://schemas.microsoft.com/office/spreadsheetml/2009/9/ac">'
    b'<dimension ref="A1:C4"/><sheetData>'
    b'<row r="1" spans="1:3" x14ac:dyDescent="0.25"><c r="A1" s="2" t="s"><v>0</v></c><c r="C1" t="s"><v>1</v></c></row>'
    b'<row r="2" spans="1:3"><c r="A2" t="s"><v>2</v></c><c r="C2" s="5" t="s"><v>3</v></c></row>'
    b'<row r="4" spans="1:3"><c r="A4" t="s"><v>4</v></c><c r="B4"><f>LEN(A4)</f><v>7</v></c></row>'
    b'</sheetData><pageMargins left="0.7" right="0.7" top="0.75" bottom="0.75" header="0.3" footer="0.3"/>'
    b'</worksheet>'
)


def test_excel_xml_patch_on_an_excel_style_sheet():
    from crm_automation.sheets.excel import _patch_sheet

    out = _patch_sheet(EXCEL_STYLE_SHEET, [(1, 2, "a&b <x>"), (1, 1, "=1+1"), (2, 0, "new row"), (3, 4, "E4"),
                                           (0, 4, "状态")])
    assert out is not None
    text = out.decode()
    # a replaced cell keeps its style and becomes an inline string; new cells go in column order
    assert ('<row r="2" x14ac:dyDescent="0.25">' not in text)
    assert ('<row r="2"><c r="A2" t="s"><v>2</v></c>'
            '<c r="B2" t="inlineStr"><is><t xml:space="preserve">=1+1</t></is></c>'
            '<c r="C2" s="5" t="inlineStr"><is><t xml:space="preserve">a&amp;b &lt;x&gt;</t></is></c></row>') in text
    # the missing row 3 is inserted between rows 2 and 4; the formula in B4 is untouched
    assert text.index('<row r="3">') < text.index('<row r="4">')
    assert '<c r="B4"><f>LEN(A4)</f><v>7</v></c><c r="E4" t="inlineStr">' in text
    assert '<row r="1" x14ac:dyDescent="0.25"><c r="A1" s="2" t="s"><v>0</v></c>' in text  # spans dropped
    assert '<dimension ref="A1:E4"' in text
    assert text.endswith("</worksheet>")


def test_excel_xml_patch_refuses_to_overwrite_a_formula():
    from crm_automation.sheets.excel import _patch_sheet

    assert _patch_sheet(EXCEL_STYLE_SHEET, [(3, 1, "x")]) is None


def test_write_back_reports_the_digest_of_what_it_wrote(backend):
    src = backend.make(ROWS)
    res = src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}}, version=src.read().version)
    assert res.cells == 1
    if backend.checks_version:  # files: the worker records it, so its own write does not force a re-read
        assert res.fingerprint == src.fingerprint()
    else:
        assert res.fingerprint == ""


@pytest.mark.parametrize("op", ["write_back", "append_rows"])
def test_a_save_while_we_write_is_never_overwritten(file_backend, monkeypatch, op):
    backend = file_backend  # files only: Google writes cells in place
    src = backend.make(ROWS)
    data = src.read()
    load = src._load

    def load_then_a_colleague_saves():
        out = load()
        backend.edit(lambda g: g[1].__setitem__(1, "阿里巴巴"))  # saved just after our read, before our rename
        return out

    monkeypatch.setattr(src, "_load", load_then_a_colleague_saves)
    if op == "write_back":
        res = src.write_back("邮箱", {"a@x.com": {"邮件状态": "ok"}}, version=data.version)
        assert res.postponed and "changed" in res.postponed
    else:
        with pytest.raises(ServiceError, match="rows not added"):
            src.append_rows([{"邮箱": "new@x.com", "客户名称": "新"}])
    grid = backend.cells()
    assert _row_of(grid, "a@x.com")[1] == "阿里巴巴"  # their save survives
    assert "邮件状态" not in [_text(h) for h in grid[0]] and not any(r and r[0] == "new@x.com" for r in grid)
